"""Block-wise reconstruction with curriculum learning (METHOD.md section 4) and the
differentiable rank search of low-rank compensation (METHOD.md section 2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapters import ModelAdapter
from .adaround import AdaRound
from .calibration import activation_quantizers
from .config import ReconstructionConfig, SearchConfig
from .errors import AdapterError
from .lowrank import RankSearchBranch, cap_ranks
from .modules import AttentionQuantizers, _QuantLayer
from .progress import progress
from .quantizers import DynamicFocusingQuantizer, Quantizer, UniformQuantizer


class _StopForward(Exception):
    """Raised from a hook once the unit's input (and output) are captured: the rest is not needed."""


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def first_tensor(obj) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for o in obj:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


@torch.no_grad()
def capture_unit_io(model: nn.Module, adapter: ModelAdapter, unit: nn.Module, batches: list, with_output: bool,
                    desc: str = "", show: bool = False) -> list[list]:
    """Run the model on every batch and record ``[args, kwargs, output]`` of ``unit``'s first call."""
    records: list[list] = []

    def pre_hook(module, args, kwargs):
        records.append([_detach(args), _detach(kwargs), None])
        if not with_output:
            raise _StopForward

    def post_hook(module, args, kwargs, output):
        records[-1][2] = _detach(first_tensor(output))
        raise _StopForward

    h1 = unit.register_forward_pre_hook(pre_hook, with_kwargs=True)
    h2 = unit.register_forward_hook(post_hook, with_kwargs=True) if with_output else None
    try:
        for batch in progress(batches, desc=desc, enabled=show):
            before = len(records)
            try:
                adapter.run(model, batch)
            except _StopForward:
                pass
            if len(records) != before + 1:
                raise AdapterError(f"unit {type(unit).__name__} was not called exactly once by adapter.run")
    finally:
        h1.remove()
        if h2 is not None:
            h2.remove()
    return records


@dataclass
class UnitData:
    """Calibration inputs and full-precision targets of one unit, split into samples."""

    args: list[tuple]
    kwargs: list[dict]
    targets: list[torch.Tensor]
    stackable: bool
    view: Callable[[torch.Tensor], torch.Tensor] | None = None  # ModelAdapter.output_view
    loss: str = "l2"  # "kl" for logits (ReconstructionConfig.logits_loss)
    # elementwise weights of the squared error, shaped like one sample's viewed output with a leading 1
    # (ReconstructionConfig.loss_weighting); None = all alike
    weight: torch.Tensor | None = None

    def __len__(self):
        return len(self.targets)

    def batch(self, idx: list[int]):
        """``(args, kwargs, target)`` of the samples ``idx`` stacked along dim 0 (stackable data), else per sample."""
        if not self.stackable:
            return [(self.args[i], self.kwargs[i], self.targets[i]) for i in idx]
        args = tuple(torch.cat([self.args[i][j] for i in idx]) if isinstance(self.args[idx[0]][j], torch.Tensor)
                     else self.args[idx[0]][j] for j in range(len(self.args[idx[0]])))
        kwargs = {k: torch.cat([self.kwargs[i][k] for i in idx]) if isinstance(v, torch.Tensor) else v
                  for k, v in self.kwargs[idx[0]].items()}
        return [(args, kwargs, torch.cat([self.targets[i] for i in idx]))]


def _splittable(args, kwargs, target) -> bool:
    n = target.shape[0] if target is not None and target.ndim > 0 else None
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    return n is not None and n > 1 and all(t.ndim > 0 and t.shape[0] == n for t in tensors) and bool(tensors)


def build_unit_data(inputs: list[list], targets: list[list],
                    view: Callable[[torch.Tensor], torch.Tensor] | None = None, loss: str = "l2",
                    weight: torch.Tensor | None = None) -> UnitData:
    """Pair captured inputs with full-precision targets; split calls into samples where every
    tensor argument and the output share the batch dimension. ``view``: compare outputs through it;
    ``loss``: "l2" or "kl" (outputs are logits over their last dim); ``weight``: elementwise weights of
    the squared "l2" error, shaped like one sample's output as ``view`` leaves it, with a leading 1."""
    args, kwargs, outs = [], [], []
    for (a, k, _), (_, _, y) in zip(inputs, targets):
        if _splittable(a, k, y):
            n = y.shape[0]
            for i in range(n):
                args.append(tuple(x[i:i + 1] if isinstance(x, torch.Tensor) else x for x in a))
                kwargs.append({kk: v[i:i + 1] if isinstance(v, torch.Tensor) else v for kk, v in k.items()})
                outs.append(y[i:i + 1])
        else:
            args.append(a)
            kwargs.append(k)
            outs.append(y)
    shapes = {tuple(tuple(x.shape[1:]) for x in a if isinstance(x, torch.Tensor)) + (tuple(y.shape),)
              for a, y in zip(args, outs)}
    stackable = len(shapes) == 1 and all(y.shape[0] == 1 for y in outs)
    if view is not None:
        outs = [view(y) for y in outs]
    if weight is not None and any(y.shape[1:] != weight.shape[1:] for y in outs):
        raise AdapterError(f"loss weights of shape {tuple(weight.shape[1:])} do not match unit outputs of shape "
                           f"{tuple(outs[0].shape[1:])}")
    return UnitData(args, kwargs, outs, stackable, view, loss, weight)


def _kl_from_logits(target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(out))`` over the last dim, elementwise over the others."""
    log_p = torch.log_softmax(target.float(), dim=-1)
    return (log_p.exp() * (log_p - torch.log_softmax(out.float(), dim=-1))).sum(-1)


def sample_losses(unit: nn.Module, data: UnitData, idx: list[int]) -> torch.Tensor:
    """Per-sample ``||B_q(x) - B_fp(x)||_F`` (of the unit's output view, if it has one), or with
    ``data.loss == "kl"`` the KL divergence of the quantized logits' softmax from the float one."""
    losses = []
    for args, kwargs, target in data.batch(idx):
        out = first_tensor(unit(*args, **kwargs))
        if data.view is not None:
            out = data.view(out)
        n = target.shape[0] if data.stackable else 1
        if data.loss == "kl":
            losses.append(_kl_from_logits(target, out).reshape(n, -1).sum(1))
        elif data.weight is not None:
            losses.append(((out - target) ** 2 * data.weight).reshape(n, -1).sum(1).sqrt())
        else:
            losses.append((out - target).reshape(n, -1).norm(dim=1))
    return torch.cat(losses)


def _eval_all_losses(unit, data: UnitData, chunk: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([sample_losses(unit, data, list(range(i, min(i + chunk, len(data)))))
                          for i in range(0, len(data), chunk)])


def curriculum_fraction(t: int, total: int, lambda0: float) -> float:
    """``lambda(t) = min(1, lambda0 + (1 - lambda0) t / T)``."""
    return min(1.0, lambda0 + (1.0 - lambda0) * t / max(total, 1))


def curriculum_pool(order: torch.Tensor, fraction: float, min_size: int) -> torch.Tensor:
    """The easiest ``fraction`` of samples (``order`` sorts samples by ascending hardness)."""
    size = max(min_size, math.ceil(fraction * len(order)))
    return order[: min(size, len(order))]


def _param_groups(unit: nn.Module, cfg: ReconstructionConfig, learn_weight_scale: bool) -> list[dict]:
    """One Adam group per tensor family and layer. Learning rates are relative: a scale's group
    lr is ``lr x mean|scale|`` and a low-rank branch's is ``lr x std(W0)``, so that one setting
    fits layers and models whose magnitudes differ by orders."""
    groups = []

    def add(params, lr):
        if params:
            groups.append(dict(params=params, lr=float(lr)))

    weight_quantizers = set()
    for _, m in unit.named_modules():
        if isinstance(m, _QuantLayer):
            weight_quantizers.add(id(m.weight_quantizer))
            if m.lowrank is not None:
                params = [p for n, p in m.lowrank.named_parameters() if n != "alpha"]
                add(params, cfg.lr_lowrank * float(m.weight.detach().std()))
            wq = m.weight_quantizer
            if learn_weight_scale and isinstance(wq, UniformQuantizer) and not bool(m.weight_is_quantized):
                add([wq.scale], cfg.lr_weight_scale * float(wq.scale.detach().abs().mean()))
            if cfg.lr_bias > 0 and m.bias_correction is not None:
                add([m.bias_correction], cfg.lr_bias * float(m.weight.detach().std()))
            if cfg.lr_input_gain > 0 and m.input_gain is not None:
                add([m.input_gain], cfg.lr_input_gain)
    for _, m in unit.named_modules():
        if not isinstance(m, Quantizer) or not m.enabled or id(m) in weight_quantizers:
            continue
        if isinstance(m, DynamicFocusingQuantizer):
            b1, b2 = (b.detach() for b in m.interval())
            add([m.b1], cfg.lr_dfq * (float(b1) if m.spacing == "log" else max(float(b1), 1e-3)))
            add([m.b2], cfg.lr_dfq * float(b2))
        elif isinstance(m, UniformQuantizer) and m.learnable and bool(m.initialized):
            add([m.scale], cfg.lr_act_scale * float(m.scale.detach().abs().mean()))
    return groups


def _restore_if_worse(params: list[torch.Tensor], start: list[torch.Tensor], before: float,
                      mean_loss: Callable[[], float]) -> float:
    """The loss after training; if it is not below ``before`` (or is NaN), ``params`` go back to ``start``
    first."""
    after = mean_loss()
    if not after <= before:
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        after = mean_loss()
    return after


def _set_trainable(unit: nn.Module, groups: list[dict]) -> None:
    for p in unit.parameters():
        p.requires_grad_(False)
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)


def reconstruct_unit(unit: nn.Module, data: UnitData, cfg: ReconstructionConfig, generator: torch.Generator,
                     learn_weight_scale: bool = True, desc: str = "", show: bool = False,
                     rounding: AdaRound | None = None) -> tuple[float, float]:
    """Optimize the unit's learnable quantization parameters against its full-precision outputs; if that
    ends above the starting loss, the starting parameters are restored. Returns the mean per-sample loss
    before and after. ``rounding``: learn the weight rounding too (AdaRound; the weight step sizes stay
    fixed unless ``rounding.learn_scale``); the loss after is that of the hard rounding, left attached
    for :meth:`AdaRound.finish`."""
    unit.eval()
    before = float(_eval_all_losses(unit, data).mean())
    if cfg.iters <= 0:
        return before, before
    if rounding is not None:
        learn_weight_scale = learn_weight_scale and rounding.learn_scale
        rounding.attach()
    groups = _param_groups(unit, cfg, learn_weight_scale)
    # the rounding variables keep a constant learning rate (as in AdaRound): the regularizer that makes
    # them binary is strongest at the end, where a cosine schedule would have stopped them
    rounding_groups = rounding.param_groups() if rounding is not None else []
    if not groups and not rounding_groups:
        return before, before
    _set_trainable(unit, groups + rounding_groups)
    params = [p for g in groups + rounding_groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(groups) if groups else None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iters) if opt is not None else None
    optimizers = [o for o in (opt, torch.optim.Adam(rounding_groups) if rounding_groups else None) if o is not None]
    n = len(data)
    bs = min(cfg.batch_size, n)
    order = torch.arange(n)
    dropping = activation_quantizers(unit) if cfg.qdrop_prob > 0 else []
    for t in progress(range(cfg.iters), desc=desc, total=cfg.iters, enabled=show):
        if cfg.curriculum:
            if t % max(cfg.hardness_refresh, 1) == 0:
                order = torch.argsort(_eval_all_losses(unit, data), stable=True)  # hardness: no QDrop
            pool = curriculum_pool(order, curriculum_fraction(t, cfg.iters, cfg.lambda0), bs)
        else:
            pool = order
        idx = pool[torch.randperm(len(pool), generator=generator)[:bs]].tolist()
        for q in dropping:
            q.drop_prob = cfg.qdrop_prob
        try:
            loss = sample_losses(unit, data, idx).mean()
        finally:
            for q in dropping:
                q.drop_prob = 0.0
        penalty = rounding.penalty(t, cfg.iters) if rounding is not None else None
        if penalty is not None:
            loss = loss + before * penalty
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in optimizers:
            o.step()
        if sched is not None:
            sched.step()
    for p in params:
        p.requires_grad_(False)
    if rounding is not None:
        rounding.harden()
    return before, _restore_if_worse(params, start, before, lambda: float(_eval_all_losses(unit, data).mean()))


def search_unit_ranks(unit: nn.Module, data: UnitData, cfg: SearchConfig, generator: torch.Generator,
                      desc: str = "", show: bool = False) -> dict[str, int]:
    """DARTS over candidate ranks for every quantized Linear in ``unit`` (first-order, alternating
    Theta on D_train and alpha on D_val). Leaves the ``argmax alpha`` branch attached inside the
    weight quantizer; returns ``{layer name within unit: rank}``."""
    from .modules import QuantLinear

    layers = [(n, m) for n, m in unit.named_modules() if isinstance(m, QuantLinear)]
    if not layers:
        return {}
    unit.eval()
    for _, layer in layers:
        ranks = cap_ranks(cfg.candidate_ranks, layer.in_features, layer.out_features)
        layer.attach_lowrank(RankSearchBranch(layer.in_features, layer.out_features, ranks, generator, cfg.drop_prob),
                             inside_quantizer=cfg.branch_inside_quantizer)
    branches = [m.lowrank for _, m in layers]
    n = len(data)
    perm = torch.randperm(n, generator=generator)
    n_val = min(max(1, round(cfg.val_fraction * n)), n - 1) if n > 1 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if n_val == 0:
        val_idx = train_idx
    theta = [p for b in branches for p in b.theta_parameters()]
    alphas = [b.alpha for b in branches]
    for p in unit.parameters():
        p.requires_grad_(False)
    for p in theta + alphas:
        p.requires_grad_(True)
    opt_theta = torch.optim.Adam(theta, lr=cfg.lr_theta)
    opt_alpha = torch.optim.Adam(alphas, lr=cfg.lr_alpha)
    max_rank = max(max(b.ranks) for b in branches)
    bs = 8

    def batch_from(pool):
        return pool[torch.randperm(len(pool), generator=generator)[: min(bs, len(pool))]].tolist()

    for _ in progress(range(cfg.iters), desc=desc, total=cfg.iters, enabled=show):
        for b in branches:
            if cfg.single_path:
                b.active = int(torch.randint(len(b.ranks), (1,), generator=generator))
            else:
                b.drop = True
        loss = sample_losses(unit, data, batch_from(train_idx)).mean()
        opt_theta.zero_grad(set_to_none=True)
        loss.backward()
        opt_theta.step()
        for b in branches:
            b.drop, b.active = False, None
        loss = sample_losses(unit, data, batch_from(val_idx)).mean()
        if cfg.rank_cost:
            expected = torch.stack([b.expected_rank() for b in branches]).mean() / max_rank
            loss = loss * (1 + cfg.rank_cost * expected)
        opt_alpha.zero_grad(set_to_none=True)
        loss.backward()
        opt_alpha.step()
    chosen = {}
    for name, layer in layers:
        branch = layer.lowrank
        single = branch.to_single(cfg.keep_searched_weights, generator, cfg.single_path)
        layer.attach_lowrank(single, inside_quantizer=True)
        chosen[name] = single.rank
    for p in unit.parameters():
        p.requires_grad_(False)
    return chosen


def attach_fixed_rank(unit: nn.Module, rank: int, generator: torch.Generator) -> dict[str, int]:
    from .lowrank import LowRankBranch
    from .modules import QuantLinear

    chosen = {}
    for name, layer in unit.named_modules():
        if isinstance(layer, QuantLinear):
            r = min(rank, layer.in_features, layer.out_features)
            layer.attach_lowrank(LowRankBranch(layer.in_features, layer.out_features, r, generator), inside_quantizer=True)
            chosen[name] = r
    return chosen


def attention_quantizer_modules(model: nn.Module) -> list[tuple[str, AttentionQuantizers]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionQuantizers)]


UnitCallback = Callable[[str, int], Any]


def _sub_batch(batch, target: torch.Tensor, idx: torch.Tensor):
    """Rows ``idx`` of a tensor batch and its target (other batch types are used whole)."""
    if isinstance(batch, torch.Tensor) and batch.ndim > 0 and batch.shape[0] == target.shape[0]:
        return batch[idx], target[idx]
    return batch, target


def _last_unit_output(model: nn.Module, adapter: ModelAdapter, unit: nn.Module, batch) -> torch.Tensor:
    """``unit``'s output on ``batch``, with gradients; the rest of the forward is skipped."""
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append(first_tensor(output))
        raise _StopForward

    handle = unit.register_forward_hook(hook)
    try:
        adapter.run(model, batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if len(captured) != 1:
        raise AdapterError(f"unit {type(unit).__name__} was not called exactly once by adapter.run")
    return captured[0]


def _row_errors(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||out - target||_F`` along dim 0."""
    return (out - target).reshape(target.shape[0], -1).norm(dim=1)


def reconstruct_network(model: nn.Module, adapter: ModelAdapter, units: list[nn.Module], batches: list,
                        targets: list[torch.Tensor], cfg: ReconstructionConfig, generator: torch.Generator,
                        learn_weight_scale: bool = True, show: bool = False) -> tuple[float, float]:
    """Train the parameters of every unit together for ``cfg.network_iters`` steps against the float
    output of the last unit (``targets``, one per batch). Tensor batches are sub-sampled to
    ``cfg.network_batch_size`` rows per step. If that ends above the starting loss, the starting
    parameters are restored (as :func:`reconstruct_unit` does). Returns the mean per-sample loss before and after."""
    last = units[-1]

    def mean_loss() -> float:
        with torch.no_grad():
            losses = [_row_errors(_last_unit_output(model, adapter, last, b), y) for b, y in zip(batches, targets)]
        return float(torch.cat(losses).mean())

    for unit in units:
        unit.eval()
    before = mean_loss()
    groups = [dict(g, lr=g["lr"] * cfg.network_lr_scale)
              for unit in units for g in _param_groups(unit, cfg, learn_weight_scale)]
    if not groups or cfg.network_iters <= 0:
        return before, before
    _set_trainable(model, groups)
    params = [p for g in groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.network_iters)
    for _ in progress(range(cfg.network_iters), desc="network", total=cfg.network_iters, enabled=show):
        b = int(torch.randint(len(batches), (1,), generator=generator))
        y = targets[b]
        rows = torch.randperm(y.shape[0], generator=generator)[: cfg.network_batch_size]
        batch, y = _sub_batch(batches[b], y, rows)
        out = _last_unit_output(model, adapter, last, batch)
        loss = _row_errors(out, y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    for p in model.parameters():
        p.requires_grad_(False)
    return before, _restore_if_worse(params, start, before, mean_loss)
