"""Named calibration budgets ("recipes") and the method configs built from them.

A recipe sets the reconstruction and rank-search budget of the methods that reconstruct
(``brecq``, ``aiqvit``); ``minmax`` and ``repq`` do not train and ignore it.

* ``default``: sized so that the whole point-cloud benchmark (2 tasks x 4 methods x 3 bit-widths,
  512 calibration samples) finishes within an hour on 2 CPU cores: measured 35.6 min
  (benchmarks/results/pointcloud.md). At 3 bits it reconstructs three times as long (120 iterations
  per unit): on held-out objects that gained 0.7 to 1.3 OA (cls, aiqvit and brecq alike) and 1.0
  instance mIoU (partseg) (docs/METHOD-NOTES.md, "Reconstruction budget at 3 bits").
* ``fast``: a smoke test (seconds per unit).
* ``paper``: the paper's budget (2,000 search + 6,000 reconstruction iterations per block, batch 24);
  hours per model on a CPU.
"""

from __future__ import annotations

from aiqvit import QuantConfig
from aiqvit.config import parse_overrides  # noqa: F401  (re-exported: cli, benchmarks)
from aiqvit.errors import AIQViTError

RECIPES: dict[str, dict[str, dict]] = {
    "fast": {"reconstruction": dict(iters=10, batch_size=8, hardness_refresh=5), "search": dict(iters=5)},
    # 512 calibration shapes set the activation ranges; reconstruction and rank search use the first
    # 4 calibration batches (128 shapes): each unit re-runs the model on them twice. With all 512 (and
    # 80 + 30 iterations) one aiqvit part-segmentation run had not finished after 24 minutes on one core.
    "default": {"reconstruction": dict(iters=40, batch_size=16, hardness_refresh=20, max_batches=4),
                "search": dict(iters=15)},
    "paper": {"reconstruction": dict(iters=6000, batch_size=24, hardness_refresh=50), "search": dict(iters=2000)},
}
# {recipe: ((bits, fields), ...)}: reconstruction fields that replace the recipe's when the lower of the
# weight and activation bit-widths is at most ``bits`` (the smallest matching ``bits`` wins)
LOW_BIT_RECONSTRUCTION: dict[str, tuple[tuple[int, dict], ...]] = {"default": ((3, dict(iters=120)),)}
RECONSTRUCTING = ("brecq", "aiqvit")
# Point Transformer activations have rare large values (max pooling, position MLPs): min-max
# initialized 4-bit activation ranges waste most levels. Percentile init (as the repq preset uses)
# is applied to both reconstructing methods alike. Measured with `run.py --smoke` settings
# (W4/A4, 64 calibration shapes, recipe fast, 96 test shapes): aiqvit OA 95.83 -> 97.92 (cls),
# instance mIoU 75.21 -> 79.63 (partseg); brecq 94.79 -> 96.88, 68.24 -> 78.13.
POINTCLOUD_OVERRIDES = {"act_init": "percentile"}
# aiqvit also learns a gain per input channel of every Linear (``reconstruction.lr_input_gain``, core 0.3.3)
# when the lower of its bit-widths is at least this; brecq cannot (AdaRound rounds the weights the gains
# would move). On 600 held-out objects (docs/METHOD-NOTES.md, "Learned input gains"): partseg W6/A6 +0.11
# instance mIoU (three seeds, each ahead), W4/A4 +0.05; cls W4/A4 +0.58 OA (two seeds), W6/A6 equal;
# cls W3/A3 -0.25 (two seeds, one each way), so not at 3 bits.
AIQVIT_INPUT_GAIN_LR = 0.03
AIQVIT_INPUT_GAIN_MIN_BITS = 4


def quant_config(method: str, w_bits: int, a_bits: int, recipe: str = "default", seed: int = 0,
                 **overrides) -> QuantConfig:
    """The preset of ``method`` at ``w_bits``/``a_bits`` with the budget of ``recipe`` (and, for brecq and
    aiqvit, :data:`POINTCLOUD_OVERRIDES`; for aiqvit outside the ``paper`` recipe, learned input gains at
    :data:`AIQVIT_INPUT_GAIN_MIN_BITS` bits and above). ``overrides`` set config fields and win over the recipe; dotted
    keys reach the nested configs (``{"reconstruction.iters": 100}``), as in ``QuantConfig.for_method``."""
    if recipe not in RECIPES:
        raise AIQViTError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    fields: dict = {}
    if method in RECONSTRUCTING:
        fields.update(POINTCLOUD_OVERRIDES)
        budget = {group: dict(values) for group, values in RECIPES[recipe].items()}
        for bits, low_bit in sorted(LOW_BIT_RECONSTRUCTION.get(recipe, ()), key=lambda item: item[0]):
            if min(w_bits, a_bits) <= bits:
                budget["reconstruction"].update(low_bit)
                break
        fields.update({f"{group}.{name}": value for group, values in budget.items() for name, value in values.items()})
    if method == "aiqvit" and recipe != "paper" and min(w_bits, a_bits) >= AIQVIT_INPUT_GAIN_MIN_BITS:
        fields["reconstruction.lr_input_gain"] = AIQVIT_INPUT_GAIN_LR
    for key, value in overrides.items():
        if key in ("reconstruction", "search") and isinstance(value, dict):
            fields.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            fields[key] = value
    return QuantConfig.for_method(method, w_bits, a_bits, seed=seed, **fields)
