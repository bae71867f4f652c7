"""SyntheticParts: a procedurally generated, seeded stand-in for ModelNet40 / ShapeNetPart.

Neither real dataset can be downloaded here, so the default data is synthetic: 15 object
categories assembled from parametric parts (boxes, cylinders, frusta, ellipsoids, torus arcs,
spherical caps) with random proportions, each point labelled with its part (40 parts in all,
global ids as in ShapeNetPart). Some categories are close on purpose (table / bench / stool,
bottle / vase, chair / sofa, lamp / umbrella) so that classification is not trivial. Each object
is sampled on its surface (points per primitive proportional to its area), randomly scaled per
axis, rotated about the up axis (y) and slightly tilted; most objects are then partially occluded
(the points beyond a random plane are cut away, as in a single scan), normalized to the unit
sphere and jittered. Object ``i`` of a split is generated from its own seed ``(seed, split, i)``,
so the data does not depend on generation order.

Results on it are reported as "SyntheticParts (synthetic)", never as ModelNet40/ShapeNetPart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import numpy as np

from .common import PointCloudDataset, cache_dir

VERSION = 2
SPLITS = {"train": 0, "test": 1}

# category -> its part names (global part ids follow this order)
CATEGORY_PARTS: dict[str, list[str]] = {
    "airplane": ["fuselage", "wings", "tail"],
    "bed": ["frame", "headboard", "legs"],
    "bottle": ["body", "neck", "cap"],
    "car": ["body", "cabin", "wheels"],
    "chair": ["seat", "back", "legs"],
    "guitar": ["body", "neck", "head"],
    "lamp": ["base", "pole", "shade"],
    "mug": ["body", "handle"],
    "rocket": ["body", "nose", "fins"],
    "table": ["top", "legs"],
    "umbrella": ["canopy", "shaft", "handle"],
    "sofa": ["base", "back", "arms"],
    "stool": ["seat", "legs"],
    "vase": ["body", "neck"],
    "bench": ["seat", "legs"],
}
CATEGORIES = list(CATEGORY_PARTS)


def seg_classes() -> dict[str, list[int]]:
    """Category -> its global part ids (ShapeNetPart's ``seg_classes`` convention)."""
    out, nxt = {}, 0
    for cat, parts in CATEGORY_PARTS.items():
        out[cat] = list(range(nxt, nxt + len(parts)))
        nxt += len(parts)
    return out


# ---------------------------------------------------------------------------------------------
# Primitive surfaces. Each returns (area, sampler); sampler(rng, n) -> (n, 3) points.
# Local frames are y-up; ``rot`` (3x3) and ``center`` place the primitive.

def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


_I = np.eye(3)
Primitive = tuple[float, Callable[[np.random.Generator, int], np.ndarray]]


def box(center, size, rot=_I) -> Primitive:
    size = np.asarray(size, dtype=np.float64)
    sx, sy, sz = size
    areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])

    def sample(rng, n):
        face = rng.choice(6, n, p=areas / areas.sum())
        p = rng.random((n, 3)) - 0.5
        p[np.arange(n), face // 2] = np.where(face % 2 == 1, 0.5, -0.5)
        return (p * size) @ rot.T + center

    return float(areas.sum()), sample


def frustum(base, height, r0, r1, rot=_I, cap_bottom=True, cap_top=True) -> Primitive:
    """Surface of revolution about local y from radius r0 (y=0) to r1 (y=height), optional discs."""
    lateral = np.pi * (r0 + r1) * np.hypot(r1 - r0, height)
    caps = np.array([np.pi * r0**2 * cap_bottom, np.pi * r1**2 * cap_top])
    areas = np.array([lateral, *caps])

    def sample(rng, n):
        which = rng.choice(3, n, p=areas / areas.sum())
        u, theta = rng.random(n), rng.random(n) * 2 * np.pi
        if abs(r1 - r0) < 1e-9:
            t = u
        else:  # density along the axis proportional to the radius
            t = (np.sqrt(r0**2 + u * (r1**2 - r0**2)) - r0) / (r1 - r0)
        radius = r0 + (r1 - r0) * t
        y = t * height
        disc = np.sqrt(rng.random(n))
        radius = np.where(which == 1, disc * r0, np.where(which == 2, disc * r1, radius))
        y = np.where(which == 1, 0.0, np.where(which == 2, height, y))
        p = np.stack([radius * np.cos(theta), y, radius * np.sin(theta)], axis=1)
        return p @ rot.T + base

    return float(areas.sum()), sample


def cylinder(base, height, radius, rot=_I, caps=True) -> Primitive:
    return frustum(base, height, radius, radius, rot, caps, caps)


def ellipsoid(center, radii, rot=_I) -> Primitive:
    a, b, c = radii
    p = 1.6075  # Knud Thomsen's surface-area approximation
    area = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)

    def sample(rng, n):
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
        return (d * np.asarray(radii)) @ rot.T + center

    return float(area), sample


def torus_arc(center, major, minor, a0, a1, rot=_I) -> Primitive:
    """Tube of radius ``minor`` along a circle of radius ``major`` in the local xy plane, angles a0..a1."""
    area = 4 * np.pi**2 * major * minor * (a1 - a0) / (2 * np.pi)

    def sample(rng, n):
        u = a0 + (a1 - a0) * rng.random(n)
        v = rng.random(n) * 2 * np.pi
        ring = major + minor * np.cos(v)
        p = np.stack([ring * np.cos(u), ring * np.sin(u), minor * np.sin(v)], axis=1)
        return p @ rot.T + center

    return float(area), sample


def spherical_cap(top, radius, max_angle, rot=_I) -> Primitive:
    """Cap of a sphere whose highest point is ``top``; polar angle up to ``max_angle``."""
    area = 2 * np.pi * radius**2 * (1 - np.cos(max_angle))

    def sample(rng, n):
        z = rng.uniform(np.cos(max_angle), 1.0, n)
        phi = rng.random(n) * 2 * np.pi
        s = np.sqrt(1 - z**2)
        p = np.stack([radius * s * np.cos(phi), radius * (z - 1), radius * s * np.sin(phi)], axis=1)
        return p @ rot.T + top

    return float(area), sample


# ---------------------------------------------------------------------------------------------
# Categories: each returns [(local part index, primitive), ...].

def _legs(rng, xs, zs, height, radius, square=False):
    out = []
    for x in xs:
        for z in zs:
            prim = (box((x, height / 2, z), (2 * radius, height, 2 * radius)) if square
                    else cylinder((x, 0, z), height, radius, caps=False))
            out.append(prim)
    return out


def _airplane(rng):
    length, r = rng.uniform(1.6, 2.2), rng.uniform(0.09, 0.16)
    span, chord = rng.uniform(1.3, 2.2), rng.uniform(0.25, 0.45)
    sweep = rng.uniform(0, 0.5)
    wx = rng.uniform(-0.15, 0.15) * length
    parts = [(0, ellipsoid((0, 0, 0), (length / 2, r, r)))]
    for side in (-1, 1):
        parts.append((1, box((wx - sweep * span / 4, rng.uniform(-0.6, 0.1) * r, side * span / 4),
                             (chord, 0.03, span / 2), _rot_y(side * sweep))))
    tail_x, fin_h = -length / 2 + 0.12, rng.uniform(0.2, 0.4)
    parts.append((2, box((tail_x, r + fin_h / 2, 0), (rng.uniform(0.15, 0.3), fin_h, 0.03))))
    parts.append((2, box((tail_x, r * 0.5, 0), (rng.uniform(0.12, 0.22), 0.03, rng.uniform(0.4, 0.75)))))
    return parts


def _bed(rng):
    w, ln, t, leg = rng.uniform(1.0, 1.5), rng.uniform(1.6, 2.2), rng.uniform(0.2, 0.35), rng.uniform(0.08, 0.25)
    hh = rng.uniform(0.35, 0.8)
    parts = [(0, box((0, leg + t / 2, 0), (w, t, ln))),
             (1, box((0, leg + (t + hh) / 2, -ln / 2 - 0.04), (w, t + hh, 0.07)))]
    parts += [(2, p) for p in _legs(rng, (-w / 2 + 0.06, w / 2 - 0.06), (-ln / 2 + 0.06, ln / 2 - 0.06), leg, 0.04,
                                    square=rng.random() < 0.5)]
    return parts


def _bottle(rng):
    rb, hb = rng.uniform(0.22, 0.4), rng.uniform(0.7, 1.2)
    rn, sh, hn = rng.uniform(0.07, 0.13), rng.uniform(0.08, 0.25), rng.uniform(0.15, 0.4)
    hc = rng.uniform(0.06, 0.14)
    return [(0, frustum((0, 0, 0), hb, rb, rb, cap_top=False)),
            (1, frustum((0, hb, 0), sh, rb, rn, cap_bottom=False, cap_top=False)),
            (1, cylinder((0, hb + sh, 0), hn, rn, caps=False)),
            (2, cylinder((0, hb + sh + hn, 0), hc, rn * 1.2))]


def _car(rng):
    ln, h, w, rw = rng.uniform(1.6, 2.3), rng.uniform(0.28, 0.45), rng.uniform(0.7, 0.95), rng.uniform(0.14, 0.22)
    cl, ch = ln * rng.uniform(0.4, 0.65), rng.uniform(0.22, 0.4)
    parts = [(0, box((0, rw + h / 2, 0), (ln, h, w))),
             (1, box((rng.uniform(-0.2, 0.1) * ln, rw + h + ch / 2, 0), (cl, ch, w * 0.88)))]
    for x in (-ln / 2 + rw + 0.1, ln / 2 - rw - 0.1):
        for side in (-1, 1):
            parts.append((2, cylinder((x, rw, side * (w / 2 + 0.06) - side * 0.06), 0.12, rw,
                                      _rot_x(-side * np.pi / 2))))
    return parts


def _chair(rng):
    w, d, hs = rng.uniform(0.8, 1.1), rng.uniform(0.75, 1.1), rng.uniform(0.7, 1.05)
    hb, tilt = rng.uniform(0.6, 1.1), rng.uniform(0.0, 0.3)
    back_c = np.array([0, hs + hb / 2, -d / 2]) + np.array([0, 0, -np.sin(tilt) * hb / 2])
    parts = [(0, box((0, hs, 0), (w, 0.08, d))), (1, box(back_c, (w, hb, 0.07), _rot_x(-tilt)))]
    parts += [(2, p) for p in _legs(rng, (-w / 2 + 0.05, w / 2 - 0.05), (-d / 2 + 0.05, d / 2 - 0.05), hs,
                                    rng.uniform(0.025, 0.05), square=rng.random() < 0.5)]
    return parts


def _guitar(rng):
    r1, r2, yb = rng.uniform(0.38, 0.5), rng.uniform(0.28, 0.38), rng.uniform(0.45, 0.6)
    ln = rng.uniform(0.9, 1.3)
    top = yb + r2 * 1.6
    return [(0, ellipsoid((0, 0.0, 0), (r1, r1 * 1.1, 0.12))),
            (0, ellipsoid((0, yb, 0), (r2, r2 * 1.1, 0.11))),
            (1, box((0, top + ln / 2 - 0.2, 0), (0.1, ln, 0.06))),
            (2, box((0, top + ln - 0.2 + 0.13, 0.02), (0.17, 0.26, 0.05), _rot_x(rng.uniform(0, 0.3))))]


def _lamp(rng):
    rb, hb, hp = rng.uniform(0.2, 0.4), rng.uniform(0.04, 0.12), rng.uniform(0.8, 1.5)
    r0, r1, hs = rng.uniform(0.3, 0.55), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.55)
    return [(0, cylinder((0, 0, 0), hb, rb)),
            (1, cylinder((0, hb, 0), hp, rng.uniform(0.02, 0.04), caps=False)),
            (2, frustum((0, hb + hp - 0.6 * hs, 0), hs, r0, r1, cap_bottom=False, cap_top=False))]


def _mug(rng):
    r, h = rng.uniform(0.32, 0.5), rng.uniform(0.6, 1.1)
    major = rng.uniform(0.18, 0.3) * h
    return [(0, frustum((0, 0, 0), h, r, r * rng.uniform(0.95, 1.1), cap_top=False)),
            (1, torus_arc((r, h / 2, 0), major, rng.uniform(0.03, 0.05), -np.pi / 2, np.pi / 2))]


def _rocket(rng):
    r, ln, hn = rng.uniform(0.11, 0.2), rng.uniform(1.3, 2.0), rng.uniform(0.25, 0.6)
    n_fins, fh, fw = int(rng.choice([3, 4])), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.3)
    parts = [(0, cylinder((0, 0, 0), ln, r, caps=False)), (1, frustum((0, ln, 0), hn, r, 0.0, cap_bottom=False,
                                                                      cap_top=False))]
    phase = rng.uniform(0, np.pi)
    for i in range(n_fins):
        a = phase + 2 * np.pi * i / n_fins
        rot = _rot_y(a)
        parts.append((2, box(rot @ np.array([r + fw / 2, fh / 2, 0]), (fw, fh, 0.03), rot)))
    return parts


def _table(rng):
    h = rng.uniform(0.6, 1.0)
    if rng.random() < 0.3:  # round table on a pedestal
        rt = rng.uniform(0.5, 0.85)
        return [(0, cylinder((0, h, 0), 0.06, rt)),
                (1, cylinder((0, 0, 0), h, rng.uniform(0.05, 0.1), caps=False)),
                (1, cylinder((0, 0, 0), 0.04, rng.uniform(0.25, 0.45)))]
    w, d, t = rng.uniform(1.2, 2.0), rng.uniform(0.7, 1.2), rng.uniform(0.05, 0.1)
    inset = rng.uniform(0.05, 0.2)
    parts = [(0, box((0, h + t / 2, 0), (w, t, d)))]
    parts += [(1, p) for p in _legs(rng, (-w / 2 + inset, w / 2 - inset), (-d / 2 + inset, d / 2 - inset), h,
                                    rng.uniform(0.03, 0.06), square=rng.random() < 0.5)]
    return parts


def _umbrella(rng):
    radius, angle, hs = rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.3), rng.uniform(1.2, 1.7)
    hook = rng.uniform(0.08, 0.14)
    return [(0, spherical_cap((0, hs, 0), radius, angle)),
            (1, cylinder((0, 0, 0), hs, 0.025, caps=False)),
            (2, torus_arc((hook, 0, 0), hook, 0.025, np.pi, 2 * np.pi))]


def _sofa(rng):
    w, h, d = rng.uniform(1.6, 2.4), rng.uniform(0.3, 0.5), rng.uniform(0.8, 1.0)
    hb, tb = rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.25)
    wa, ha = rng.uniform(0.15, 0.25), rng.uniform(0.15, 0.35)
    return [(0, box((0, h / 2, 0), (w, h, d))),
            (1, box((0, h + hb / 2, -d / 2 + tb / 2), (w, hb, tb))),
            (2, box((-w / 2 + wa / 2, h + ha / 2, tb / 2), (wa, ha, d - tb))),
            (2, box((w / 2 - wa / 2, h + ha / 2, tb / 2), (wa, ha, d - tb)))]


def _stool(rng):
    h = rng.uniform(0.5, 0.9)
    n_legs = int(rng.choice([3, 4]))
    if rng.random() < 0.5:
        r = rng.uniform(0.2, 0.35)
        seat = cylinder((0, h, 0), rng.uniform(0.04, 0.08), r)
    else:
        r = rng.uniform(0.2, 0.35)
        seat = box((0, h + 0.03, 0), (2 * r, 0.06, 2 * r))
    splay = rng.uniform(0.0, 0.25)
    parts = [(0, seat)]
    for i in range(n_legs):
        a = 2 * np.pi * i / n_legs + np.pi / 4
        foot = np.array([np.cos(a), 0, np.sin(a)]) * (r * 0.8 + splay * h)
        top = np.array([np.cos(a), 0, np.sin(a)]) * r * 0.8 + np.array([0, h, 0])
        d = top - foot
        length = float(np.linalg.norm(d))
        tilt = np.arccos(d[1] / length)
        rot = _rot_y(-a) @ _rot_z(tilt) if tilt > 1e-6 else _I
        # rot maps local y onto the leg direction (tilted outwards along the leg's azimuth)
        parts.append((1, cylinder(foot, length, rng.uniform(0.02, 0.04), rot, caps=False)))
    return parts


def _vase(rng):
    rb, rm, hb = rng.uniform(0.15, 0.3), rng.uniform(0.3, 0.5), rng.uniform(0.7, 1.2)
    rn, hn = rng.uniform(0.1, 0.2), rng.uniform(0.15, 0.45)
    split = rng.uniform(0.3, 0.7)
    lip = rn * rng.uniform(1.0, 1.5)
    return [(0, frustum((0, 0, 0), hb * split, rb, rm, cap_top=False)),
            (0, frustum((0, hb * split, 0), hb * (1 - split), rm, rn, cap_bottom=False, cap_top=False)),
            (1, frustum((0, hb, 0), hn, rn, lip, cap_bottom=False, cap_top=False))]


def _bench(rng):
    w, d, h = rng.uniform(1.2, 2.2), rng.uniform(0.3, 0.55), rng.uniform(0.35, 0.55)
    t = rng.uniform(0.04, 0.1)
    parts = [(0, box((0, h + t / 2, 0), (w, t, d)))]
    inset = rng.uniform(0.05, 0.25)
    if rng.random() < 0.5:  # two panel legs
        for x in (-w / 2 + inset, w / 2 - inset):
            parts.append((1, box((x, h / 2, 0), (0.05, h, d * 0.9))))
    else:
        parts += [(1, p) for p in _legs(rng, (-w / 2 + inset, w / 2 - inset), (-d / 2 + 0.05, d / 2 - 0.05), h,
                                        rng.uniform(0.025, 0.045), square=rng.random() < 0.5)]
    return parts


BUILDERS = {"airplane": _airplane, "bed": _bed, "bottle": _bottle, "car": _car, "chair": _chair, "guitar": _guitar,
            "lamp": _lamp, "mug": _mug, "rocket": _rocket, "table": _table, "umbrella": _umbrella, "sofa": _sofa,
            "stool": _stool, "vase": _vase, "bench": _bench}
OCCLUSION_PROB = 0.7  # share of objects cut by a random plane
OCCLUSION_KEEP = (0.55, 0.9)  # fraction of the points kept by a cut


def occlusion_mask(pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep the points on one side of a random plane (a share ``OCCLUSION_KEEP`` of them)."""
    direction = rng.standard_normal(3)
    proj = (pts - pts.mean(0)) @ (direction / np.linalg.norm(direction))
    return proj <= np.quantile(proj, rng.uniform(*OCCLUSION_KEEP))


def generate_object(category: str, num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One object: points ``(num_points, 3)`` float32 on the unit sphere, global part labels ``(num_points,)``."""
    prims = BUILDERS[category](rng)
    offset = seg_classes()[category][0]
    areas = np.array([a for _, (a, _) in prims])
    # mostly by area; a floor keeps thin parts (poles, handles) visible
    p = 0.85 * areas / areas.sum() + 0.15 / len(prims)
    total = int(num_points / OCCLUSION_KEEP[0]) + 1  # enough points to survive the deepest cut
    counts = rng.multinomial(total, p / p.sum())
    pts = np.concatenate([sample(rng, c) for (_, (_, sample)), c in zip(prims, counts)])
    labels = np.concatenate([np.full(c, offset + part) for (part, _), c in zip(prims, counts)])
    pts = pts * rng.uniform(0.85, 1.15, size=3)
    rot = _rot_y(rng.uniform(0, 2 * np.pi)) @ _rot_x(rng.normal(0, 0.05)) @ _rot_z(rng.normal(0, 0.05))
    pts = pts @ rot.T
    if rng.random() < OCCLUSION_PROB:
        keep = occlusion_mask(pts, rng)
        pts, labels = pts[keep], labels[keep]
    pick = rng.permutation(len(pts))[:num_points]
    pts, labels = pts[pick], labels[pick]
    pts -= (pts.max(0) + pts.min(0)) / 2
    pts /= np.sqrt((pts**2).sum(1)).max()
    pts += np.clip(rng.normal(0, 0.01, pts.shape), -0.03, 0.03)
    return pts.astype(np.float32), labels.astype(np.int16)


def generate_split(split: str, size: int, num_points: int = 1024, seed: int = 0):
    """``size`` objects, categories balanced (object i is category ``i % len(CATEGORIES)``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    points = np.empty((size, num_points, 3), np.float32)
    parts = np.empty((size, num_points), np.int16)
    labels = np.arange(size) % len(CATEGORIES)
    for i in range(size):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        points[i], parts[i] = generate_object(CATEGORIES[labels[i]], num_points, rng)
    return points, labels.astype(np.int64), parts


DEFAULT_SIZES = {"train": 2400, "test": 600}  # 160 / 40 per category


def load_synthetic(split: str = "train", num_points: int = 512, *, size: int | None = None,
                   points_per_object: int = 1024, seed: int = 0, train: bool | None = None,
                   cache: bool = True) -> PointCloudDataset:
    """The SyntheticParts split (generated once, then read from the cache).

    ``num_points``: points each item draws from the ``points_per_object`` generated ones.
    ``train``: augmentation and fresh sampling per draw (default: ``split == "train"``... set it
    to False to evaluate or calibrate on the train split).
    """
    size = DEFAULT_SIZES[split] if size is None else size
    if num_points > points_per_object:
        raise ValueError(f"num_points={num_points} exceeds the {points_per_object} generated points per object")
    key = json.dumps(dict(v=VERSION, split=split, size=size, p=points_per_object, seed=seed), sort_keys=True)
    path = cache_dir() / f"synthetic-parts-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    arrays = None
    if cache and path.exists():
        try:
            with np.load(path) as z:
                arrays = z["points"], z["labels"], z["parts"]
        except (OSError, ValueError, KeyError):
            arrays = None  # a damaged cache file is regenerated
    if arrays is None:
        arrays = generate_split(split, size, points_per_object, seed)
        if cache:
            from aiqvit.io_utils import atomic_path

            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, points=arrays[0], labels=arrays[1], parts=arrays[2])
    points, labels, parts = arrays
    return PointCloudDataset(points, labels, class_names=CATEGORIES, num_points=num_points, part_labels=parts,
                             seg_classes=seg_classes(), name=f"SyntheticParts-{split} (synthetic)",
                             train=(split == "train") if train is None else train, seed=seed)
