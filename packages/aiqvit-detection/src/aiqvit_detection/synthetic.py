"""Procedurally generated COCO-format instance-segmentation data (the embedded default).

Five object categories, each a distinct outline *and* texture (colours are drawn per instance,
so colour alone never identifies a category), placed with overlap and occlusion on varied
backgrounds. Every annotation is the *visible* part of its object (later objects occlude
earlier ones) as COCO polygons; ``bbox`` and ``area`` are those of the visible polygons.

The data are synthetic: numbers measured on them say how a quantizer treats a detector, not
how the detector would score on COCO.

Deterministic: image ``i`` of split ``s`` depends only on ``(seed, s, i)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

from .coco_layout import CocoLayout

GENERATOR_VERSION = 2
CATEGORIES = [
    {"id": 1, "name": "disk", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
]
CLASS_NAMES = tuple(c["name"] for c in CATEGORIES)
# "dev": held-out images from the same generator for choosing settings (benchmarks/detection/dev_probe.py);
# neither the float detectors' training nor the benchmark's val set sees them
SPLIT_IDS = {"train": 0, "val": 1, "dev": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. The defaults are the benchmark's data set."""

    train_images: int = 2000
    val_images: int = 300
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    min_object_size: float = 14.0
    max_object_size: float = 56.0
    min_visible_fraction: float = 0.35
    seed: int = 0

    def key(self) -> str:
        return (f"v{GENERATOR_VERSION}-s{self.seed}-{self.image_size}px-{self.train_images}tr-{self.val_images}va-"
                f"{self.min_objects}to{self.max_objects}obj")


# --- outlines -----------------------------------------------------------------------------------

def _outline(category: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-size outline (max radius about 1) of a category, as (N, 2) vertices around (0, 0)."""
    if category == 1:  # disk: ellipse
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        aspect = rng.uniform(0.7, 1.0)
        return np.stack([np.cos(t), aspect * np.sin(t)], 1)
    if category == 2:  # square: rectangle
        aspect = rng.uniform(0.6, 1.0)
        return np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], float) / math.sqrt(2)
    if category == 3:  # triangle
        t = np.array([90, 210, 330]) * np.pi / 180 + rng.uniform(-0.15, 0.15, 3)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if category == 4:  # five-pointed star
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if category == 5:  # plus-shaped cross
        w = rng.uniform(0.3, 0.4)
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w],
                         [-1, -w], [-w, -w]], float)
    raise ValueError(f"unknown category {category}")


def _place(outline: np.ndarray, size: float, angle: float, center: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return outline @ rot.T * (size / 2) + np.asarray(center)


# --- textures -----------------------------------------------------------------------------------

def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0, 255, 3)
    b = rng.uniform(0, 255, 3)
    while np.abs(a - b).sum() < 180:  # keep the pattern visible
        b = rng.uniform(0, 255, 3)
    return a, b


def _texture(category: int, n: int, center, size: float, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) float texture of a category: its pattern identifies it as much as its outline."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    a, b = _two_colours(rng)
    if category == 1:  # radial shading, bright centre
        r = np.hypot(xx - center[0], yy - center[1]) / (size / 2)
        t = np.clip(r, 0, 1)
    elif category == 2:  # stripes along a random direction
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(4, 7)
        t = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif category == 3:  # checkerboard
        cell = rng.uniform(3, 5)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    elif category == 4:  # flat colour with speckle
        t = (rng.random((n, n)) < 0.2).astype(np.float32)
    elif category == 5:  # concentric rings
        period = rng.uniform(4, 6)
        t = (np.sin(np.hypot(xx - center[0], yy - center[1]) * 2 * np.pi / period) > 0).astype(np.float32)
    else:
        raise ValueError(f"unknown category {category}")
    return a * (1 - t[..., None]) + b * t[..., None]


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    if kind == 0:  # linear gradient
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ang = rng.uniform(0, 2 * np.pi)
        t = np.clip((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5, 0, 1)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == 1:  # smooth colour noise
        low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((n, n), Image.BICUBIC), np.float32)
    elif kind == 2:  # flat colour with clutter lines
        img = np.ones((n, n, 3), np.float32) * rng.uniform(0, 255, 3)
        pil = Image.fromarray(img.astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(rng.integers(3, 9)):
            p = rng.uniform(0, n, 4)
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)),
                      width=int(rng.integers(1, 3)))
        img = np.asarray(pil, np.float32)
    else:  # low-contrast tiles
        img = np.ones((n, n, 3), np.float32) * rng.uniform(40, 215, 3)
        for _ in range(rng.integers(2, 6)):
            x0, y0 = rng.integers(0, n, 2)
            w, h = rng.integers(8, n // 2, 2)
            img[y0:y0 + h, x0:x0 + w] += rng.uniform(-40, 40, 3)
    return img + rng.normal(0, 6, (n, n, 3))


# --- one image ----------------------------------------------------------------------------------

def _polygon_mask(vertices: np.ndarray, n: int) -> np.ndarray:
    pil = Image.new("L", (n, n), 0)
    ImageDraw.Draw(pil).polygon([tuple(map(float, v)) for v in vertices], fill=1)
    return np.asarray(pil, bool)


def _coco_polygons(geom) -> list[list[float]]:
    parts = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    out = []
    for p in parts:
        if p.area < 4.0:
            continue
        coords = np.asarray(p.exterior.coords)[:-1]
        out.append([round(float(v), 2) for v in coords.reshape(-1)])
    return out


def generate_image(spec: SyntheticSpec, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3 uint8) and its objects: dicts with category_id, segmentation, bbox, area."""
    rng = np.random.default_rng([spec.seed, SPLIT_IDS[split], index])
    n = spec.image_size
    img = _background(n, rng)
    frame = Polygon([(0, 0), (n, 0), (n, n), (0, n)])
    placed: list[tuple[int, Polygon, np.ndarray]] = []  # back to front
    want = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    for _ in range(want * 8):
        if len(placed) == want:
            break
        cat = int(rng.integers(1, len(CATEGORIES) + 1))
        size = rng.uniform(spec.min_object_size, spec.max_object_size)
        center = rng.uniform(size * 0.3, n - size * 0.3, 2)
        verts = _place(_outline(cat, rng), size, rng.uniform(0, 2 * np.pi), tuple(center))
        poly = Polygon(verts).intersection(frame)
        if poly.is_empty or poly.area < 0.5 * Polygon(verts).area:
            continue
        # the new object must leave every earlier one visible enough, without cutting holes in it
        trial = placed + [(cat, Polygon(verts), verts)]
        if all(_visible_ok(trial, i, frame, spec) for i in range(len(trial))):
            placed = trial
            tex = _texture(cat, n, center, size, rng)
            m = _polygon_mask(verts, n)
            img[m] = tex[m]
    objects = []
    for i, (cat, _, _) in enumerate(placed):
        vis = _visible(placed, i, frame)
        polys = _coco_polygons(vis)
        if not polys:
            continue
        x0, y0, x1, y1 = vis.bounds
        objects.append({"category_id": cat, "segmentation": polys, "bbox": [round(x0, 2), round(y0, 2),
                        round(x1 - x0, 2), round(y1 - y0, 2)], "area": round(float(vis.area), 2), "iscrowd": 0})
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _visible(placed, i, frame):
    """The visible part of object ``i``; slivers under a pixel wide (between occluders) are
    removed by a morphological opening, so that polygons and their rasterization agree."""
    poly = placed[i][1].intersection(frame)
    later = [p for _, p, _ in placed[i + 1:]]
    if not later:
        return poly
    vis = poly.difference(unary_union(later))
    opened = vis.buffer(-0.6, join_style="mitre").buffer(0.6, join_style="mitre").intersection(vis)
    parts = [p for p in (opened.geoms if hasattr(opened, "geoms") else [opened])
             if isinstance(p, Polygon) and p.area >= 4.0]
    return MultiPolygon(parts) if len(parts) > 1 else (parts[0] if parts else Polygon())


def _visible_ok(placed, i, frame, spec: SyntheticSpec) -> bool:
    full = placed[i][1].intersection(frame)
    vis = _visible(placed, i, frame)
    if vis.is_empty or vis.area < spec.min_visible_fraction * full.area or vis.area < 40:
        return False
    parts = list(vis.geoms) if isinstance(vis, MultiPolygon) else [vis]
    if not all(isinstance(p, Polygon) for p in parts):
        return False
    return all(len(p.interiors) == 0 for p in parts)  # COCO polygons cannot hold holes


# --- a whole data set ---------------------------------------------------------------------------

def write_split(root: Path, spec: SyntheticSpec, split: str, count: int, layout: CocoLayout, progress=True,
                source: str | None = None) -> Path:
    """Write ``count`` images as ``split`` of the COCO root; ``source`` (default: ``split``) names the
    generator split they are drawn from."""
    source = source or split
    images_dir = layout.image_dir(root, split)
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    iterator = range(count)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"synthetic {source}", unit="img")
    for i in iterator:
        img, objects = generate_image(spec, source, i)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(images_dir / name, optimize=False)
        images.append({"id": i + 1, "file_name": name, "height": spec.image_size, "width": spec.image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **obj})
    coco = {"info": {"description": f"AIQViT synthetic shapes ({spec.key()}), generated, not real photos"},
            "images": images, "annotations": annotations, "categories": CATEGORIES, "licenses": []}
    ann = layout.annotation_file(root, split)
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco))
    return ann


def generate_dataset(root: str | Path, spec: SyntheticSpec = SyntheticSpec(), layout: CocoLayout | None = None,
                     progress: bool = True) -> Path:
    """Write ``spec``'s data set under ``root`` (COCO layout) atomically; returns ``root``."""
    from aiqvit.io_utils import atomic_path

    layout = layout or CocoLayout()
    root = Path(root)
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        write_split(tmp, spec, "train", spec.train_images, layout, progress)
        write_split(tmp, spec, "val", spec.val_images, layout, progress)
        (tmp / "SPEC.json").write_text(json.dumps({"key": spec.key(), **spec.__dict__}, indent=2))
    return root


def cached_dataset(spec: SyntheticSpec = SyntheticSpec(), progress: bool = True) -> Path:
    """The data set of ``spec`` under the AIQViT cache, generated on first use."""
    from .paths import cache_dir

    root = cache_dir() / "detection" / f"synthetic-{spec.key()}"
    if not (root / "SPEC.json").exists():
        generate_dataset(root, spec, progress=progress)
    return root


def cached_dev_dataset(count: int = 150, spec: SyntheticSpec = SyntheticSpec(), progress: bool = True) -> Path:
    """``count`` held-out "dev" images of ``spec``'s generator under the AIQViT cache, as the ``val`` split
    of their own COCO root (so every evaluation path reads them unchanged); generated on first use."""
    from aiqvit.io_utils import atomic_path

    from .paths import cache_dir

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    root = cache_dir() / "detection" / f"synthetic-{spec.key()}-dev{count}"
    if not (root / "SPEC.json").exists():
        with atomic_path(root) as tmp:
            tmp.mkdir(parents=True)
            write_split(tmp, spec, "val", count, CocoLayout(), progress, source="dev")
            (tmp / "SPEC.json").write_text(json.dumps({"key": spec.key(), "split": "dev", "count": count,
                                                       **spec.__dict__}, indent=2))
    return root
