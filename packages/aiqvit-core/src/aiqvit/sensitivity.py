"""Output sensitivities for a Fisher-weighted reconstruction loss (``reconstruction.loss_weighting``).

A unit's plain loss ``||B_q(x) - B_fp(x)||`` weighs every output element alike, whatever the rest of
the model does with it. The diagonal of the Fisher information of the model's predictive distribution
with respect to a unit's output says how much each element moves the prediction: for an output ``z``
and class logits ``f(z)``, ``F = E_x E_{y ~ p(y|x)} (d log p(y|x) / dz)^2``. BRECQ (Li et al., ICLR 2021)
weighs its block loss by such squared gradients. Here ``y`` is drawn from the float model's own
softmax (no labels: calibration data is unlabeled), and the squared gradients are averaged over the
calibration samples into one map per unit (one weight per output position), which is far less noisy
than a per-sample weight from one draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .adapters import ModelAdapter
from .errors import AdapterError
from .reconstruction import first_tensor


def fisher_maps(model: nn.Module, adapter: ModelAdapter, units: list[tuple[str, nn.Module]], batches: Iterable,
                samples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{unit name: E[(d log p(y|x) / dz)^2]}`` with ``z`` the unit's output, shaped like one sample's
    output with a leading 1 (the mean over every calibration sample and ``samples`` label draws each).
    Runs the model as it is: call it with quantization disabled for the float model's sensitivities."""
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in batches:
        grads = _batch_squared_grads(model, adapter, units, batch, samples, generator)
        for name, g2 in grads.items():
            total = g2.sum(0, keepdim=True)
            if name in sums and sums[name].shape != total.shape:
                raise AdapterError(f"unit {name} returns outputs of shapes {tuple(sums[name].shape[1:])} and "
                                   f"{tuple(total.shape[1:])}: reconstruction.loss_weighting='fisher' needs one "
                                   "output shape per unit")
            sums[name] = sums[name] + total if name in sums else total
        count += next(iter(grads.values())).shape[0] if grads else 0
    return {name: sums[name] / (count * samples) for name, _ in units}


def _batch_squared_grads(model, adapter, units, batch, samples, generator) -> dict[str, torch.Tensor]:
    """Per-sample squared gradients of ``log p(y|x)`` (``y`` drawn ``samples`` times, summed) at every unit's
    output, for one calibration batch."""
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module, args, output):
            z = first_tensor(output)
            if z is None or not z.is_floating_point():
                raise AdapterError(f"unit {name} returned no floating-point tensor")
            if name in outputs:
                raise AdapterError(f"unit {name} was called more than once by adapter.run")
            if not z.requires_grad:  # the first unit: nothing before it is differentiated
                leaf = z.detach().requires_grad_(True)
                outputs[name] = leaf
                return _replace_first_tensor(output, leaf)
            outputs[name] = z
            return None
        return hook

    handles = [unit.register_forward_hook(hook_for(name)) for name, unit in units]
    try:
        with torch.enable_grad():
            logits = adapter.sensitivity_logits(model, adapter.run(model, batch))
            if logits is None or not logits.requires_grad:
                raise AdapterError(f"{type(adapter).__name__} gives no class logits that depend on its units: "
                                   "reconstruction.loss_weighting='fisher' needs ModelAdapter.sensitivity_logits")
            missing = [name for name, _ in units if name not in outputs]
            if missing:
                raise AdapterError(f"units {missing} were not called by adapter.run")
            log_p = torch.log_softmax(logits.float(), dim=-1)
            probs = log_p.detach().exp().reshape(-1, log_p.shape[-1])
            names = list(outputs)
            g2 = {name: torch.zeros_like(outputs[name]) for name in names}
            for s in range(samples):
                y = torch.multinomial(probs, 1, generator=generator)
                picked = log_p.reshape(-1, log_p.shape[-1]).gather(1, y).sum()
                grads = torch.autograd.grad(picked, [outputs[n] for n in names], retain_graph=s < samples - 1,
                                            allow_unused=True)
                for name, g in zip(names, grads):
                    if g is not None:
                        g2[name] += g.detach() ** 2
    finally:
        for h in handles:
            h.remove()
    return g2


def _replace_first_tensor(output, new: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, (list, tuple)):
        items, done = [], False
        for o in output:
            if not done and first_tensor(o) is not None:
                items.append(_replace_first_tensor(o, new))
                done = True
            else:
                items.append(o)
        return type(output)(items)
    if isinstance(output, dict):
        out, done = {}, False
        for k, o in output.items():
            if not done and first_tensor(o) is not None:
                out[k] = _replace_first_tensor(o, new)
                done = True
            else:
                out[k] = o
        return out
    return output


def loss_weights(fisher: torch.Tensor, mix: float) -> torch.Tensor:
    """Elementwise weights of a unit's squared output error: ``(1 - mix) + mix * F / mean(F)``, so that
    their mean is 1 (the loss keeps its scale, and the learning rates their meaning)."""
    mean = fisher.mean()
    if not bool(mean > 0):
        return torch.ones_like(fisher)
    return (1.0 - mix) + mix * fisher / mean
