"""Calibration recipes (how much data and how many iterations) and config overrides.

* ``paper``: the AIQViT paper's budget: 1,024 calibration images, 2,000 rank-search and 6,000 reconstruction
  iterations per unit, batch 24.
* ``fast``: the CPU default, sized so that ``aiqvit-vision quantize`` (ViT-S/14, W4/A4, calibration plus FP and
  quantized evaluation of the test subset) stays within ~15 minutes on 2 cores. At 3 bits it reconstructs
  three times as long (384 iterations per unit): there each unit starts much further from its float twin,
  and on held-out train images the longer run gained 5.8 and 7.0 points over two seeds
  (docs/METHOD-NOTES.md, "Reconstruction budget at 3 bits"). It reconstructs without the curriculum
  (every calibration sample from the first iteration): with 128-384 iterations per unit the paper's
  schedule spends most steps on the samples that are already easy, and on held-out train images turning it
  off gained at every bit-width, over two seeds each (docs/METHOD-NOTES.md, "The curriculum at the fast
  budget"). The ``paper`` recipe keeps it. At 4 bits, ``aiqvit`` also learns a gain per input channel of
  every Linear (``reconstruction.lr_input_gain=0.03``): on held-out train images that gained 0.9 top-1 and
  0.9 points of agreement with the float model at W4/A4 over four seeds, and lost at W3/A3 (-1.2 top-1 over
  three seeds) and W6/A6 (docs/METHOD-NOTES.md, "Learned input gains"). The core's ``aiqvit`` preset leaves
  it off.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiqvit import QuantConfig
from aiqvit.errors import AIQViTError


@dataclass(frozen=True)
class Recipe:
    name: str
    calib_images: int
    calib_batch: int  # images per calibration batch handed to aiqvit.quantize
    search_iters: int
    recon_iters: int
    batch_size: int  # samples per reconstruction / search step
    # ((bits, iterations), ...): reconstruction iterations when the lower of the weight and activation
    # bit-widths is at most ``bits`` (the smallest matching ``bits`` wins); otherwise ``recon_iters``
    recon_iters_by_bits: tuple[tuple[int, int], ...] = ()
    # False: reconstruct every method without the curriculum (METHOD.md section 4); True leaves each
    # method's preset as it is (aiqvit's curriculum on, brecq's off)
    curriculum: bool = True
    # aiqvit only: learn a gain per input channel of every Linear during reconstruction at this rate
    # (``reconstruction.lr_input_gain``) when the lower of the weight and activation bit-widths is one of
    # ``aiqvit_input_gain_bits``; 0 leaves the preset's (off)
    aiqvit_input_gain_lr: float = 0.0
    aiqvit_input_gain_bits: tuple[int, ...] = (4,)

    def input_gain_lr_for(self, method: str, w_bits: int, a_bits: int) -> float | None:
        """The ``reconstruction.lr_input_gain`` this recipe sets, or None where it leaves the preset's."""
        if method != "aiqvit" or not self.aiqvit_input_gain_lr or min(w_bits, a_bits) not in self.aiqvit_input_gain_bits:
            return None
        return self.aiqvit_input_gain_lr

    def recon_iters_for(self, w_bits: int, a_bits: int) -> int:
        bits = min(w_bits, a_bits)
        for limit, iters in sorted(self.recon_iters_by_bits):
            if bits <= limit:
                return iters
        return self.recon_iters

    def describe(self, w_bits: int | None = None, a_bits: int | None = None) -> str:
        """``"128 calibration images, 24 rank-search + 128 reconstruction iterations per unit, batch 8"``
        (for given bit-widths; without them, every bit-dependent budget is listed)."""
        if w_bits is not None:
            recon = str(self.recon_iters_for(w_bits, a_bits if a_bits is not None else w_bits))
        else:
            recon = str(self.recon_iters) + "".join(f" ({iters} at <= {bits} bits)"
                                                    for bits, iters in sorted(self.recon_iters_by_bits))
        return (f"{self.calib_images} calibration images, {self.search_iters} rank-search + {recon} "
                f"reconstruction iterations per unit, batch {self.batch_size}"
                + ("" if self.curriculum else ", no curriculum")
                + self._describe_input_gains(w_bits, a_bits))

    def _describe_input_gains(self, w_bits: int | None, a_bits: int | None) -> str:
        if not self.aiqvit_input_gain_lr:
            return ""
        if w_bits is None:
            bits = "/".join(str(b) for b in sorted(self.aiqvit_input_gain_bits))
            return f", aiqvit input gains at {bits} bits (lr {self.aiqvit_input_gain_lr:g})"
        if self.input_gain_lr_for("aiqvit", w_bits, a_bits if a_bits is not None else w_bits) is None:
            return ""
        return f", aiqvit input gains (lr {self.aiqvit_input_gain_lr:g})"


RECIPES = {
    "fast": Recipe("fast", calib_images=128, calib_batch=32, search_iters=24, recon_iters=128, batch_size=8,
                   recon_iters_by_bits=((3, 384),), curriculum=False, aiqvit_input_gain_lr=0.03),
    "paper": Recipe("paper", calib_images=1024, calib_batch=32, search_iters=2000, recon_iters=6000, batch_size=24),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise AIQViTError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: list[str] | None) -> dict:
    """``["lowrank=fixed", "lowrank_rank=20", "reconstruction.curriculum=false"]`` -> nested dict.

    ``off`` stays a string (``lowrank=off`` is a mode, not a boolean); use ``false`` for booleans.
    """
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise AIQViTError(f"config override {item!r} must look like key=value (e.g. lowrank=fixed)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] not in ("reconstruction", "search")):
            raise AIQViTError(f"config override {key!r}: nested keys are reconstruction.<field> or search.<field>")
        target = out
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = _parse_value(value.strip())
    return out


def build_config(method: str, w_bits: int, a_bits: int, recipe: Recipe, seed: int = 0,
                 overrides: dict | None = None) -> QuantConfig:
    """The method's preset, the recipe's iteration budget, then ``overrides`` (top level and nested)."""
    overrides = dict(overrides or {})
    nested = {k: overrides.pop(k) for k in ("reconstruction", "search") if k in overrides}
    known = {f for f in QuantConfig.__dataclass_fields__}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AIQViTError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
    config = QuantConfig.for_method(method, w_bits, a_bits, seed=seed, **overrides)
    config.reconstruction.iters = recipe.recon_iters_for(w_bits, a_bits)
    config.reconstruction.batch_size = recipe.batch_size
    config.search.iters = recipe.search_iters
    if not recipe.curriculum:
        config.reconstruction.curriculum = False
    gain_lr = recipe.input_gain_lr_for(method, w_bits, a_bits)
    if gain_lr is not None:
        config.reconstruction.lr_input_gain = gain_lr
    for section, values in nested.items():
        obj = getattr(config, section)
        for key, value in values.items():
            if not hasattr(obj, key):
                raise AIQViTError(f"unknown config key {section}.{key}")
            setattr(obj, key, tuple(value) if key == "candidate_ranks" else value)
    config.validate()
    return config
