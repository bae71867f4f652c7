"""Neighbour operations on batched point clouds ``(B, N, 3)``.

Every function has a plain-torch implementation that runs anywhere. On CUDA tensors the
``pointnet2_ops`` kernels (optional extra ``aiqvit-pointcloud[cuda]``) are used where they exist
(farthest point sampling, grouping, 3-NN); kNN is always torch (``pointnet2_ops`` has no kNN).
Set ``AIQVIT_POINT_OPS=torch`` to force the torch path everywhere.

Indices are per sample (values in ``[0, N)``), so every tensor here splits along dim 0.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def _pointnet2_utils():
    try:
        from pointnet2_ops import pointnet2_utils  # type: ignore[import-not-found]
    except ImportError:
        return None
    return pointnet2_utils


def cuda_kernels_available() -> bool:
    """True when ``pointnet2_ops`` imports and CUDA is usable."""
    return _pointnet2_utils() is not None and torch.cuda.is_available()


def _use_kernels(t: torch.Tensor, backend: str | None) -> bool:
    choice = backend or os.environ.get("AIQVIT_POINT_OPS", "auto")
    if choice not in ("auto", "torch", "cuda"):
        raise ValueError(f"point ops backend must be 'auto', 'torch' or 'cuda', got {choice!r}")
    if choice == "torch":
        return False
    usable = t.is_cuda and _pointnet2_utils() is not None
    if choice == "cuda" and not usable:
        raise RuntimeError("point ops backend 'cuda' needs CUDA tensors and the pointnet2_ops package "
                           "(pip install 'aiqvit-pointcloud[cuda]')")
    return usable


def _check_points(xyz: torch.Tensor, what: str = "xyz") -> None:
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (B, N, 3), got {tuple(xyz.shape)}")


def square_distance(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances ``(B, M, N)``. ``torch.cdist`` uses the matmul expansion (5x faster
    than differences here); its rounding (~1e-6) can only reorder neighbours at near-equal distances."""
    return torch.cdist(query, ref).square()


def farthest_point_sample(xyz: torch.Tensor, m: int, backend: str | None = None) -> torch.Tensor:
    """Indices ``(B, m)`` of ``m`` points chosen by farthest point sampling, starting at point 0."""
    _check_points(xyz)
    n = xyz.shape[1]
    if not 0 < m <= n:
        raise ValueError(f"cannot sample {m} points from a cloud of {n}")
    if _use_kernels(xyz, backend):
        return _pointnet2_utils().furthest_point_sample(xyz.float().contiguous(), m).long()
    b = xyz.shape[0]
    xyz = xyz.detach()
    idx = torch.zeros(b, m, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(b, dtype=torch.long, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(m):
        idx[:, i] = farthest
        centroid = xyz[rows, farthest].unsqueeze(1)
        dist = torch.minimum(dist, ((xyz - centroid) ** 2).sum(-1))
        farthest = dist.argmax(-1)
    return idx


def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest points of ``ref`` for each point of ``query``: ``(dist2 (B, M, k), idx (B, M, k))``,
    nearest first. A query point that is also in ``ref`` is its own first neighbour."""
    _check_points(query, "query")
    _check_points(ref, "ref")
    if not 0 < k <= ref.shape[1]:
        raise ValueError(f"k={k} must lie in [1, {ref.shape[1]}] (points in the reference cloud)")
    query, ref = query.detach(), ref.detach()
    _, idx = torch.topk(square_distance(query, ref), k, dim=-1, largest=False, sorted=True)
    # exact distances of the chosen neighbours (the matmul expansion leaves ~1e-7 where it should be 0)
    dist2 = ((index_points(ref, idx) - query.unsqueeze(2)) ** 2).sum(-1)
    dist2, order = dist2.sort(dim=-1, stable=True)
    return dist2, torch.gather(idx, -1, order)


def index_points(x: torch.Tensor, idx: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Gather per-sample rows: ``x (B, N, C)``, ``idx (B, *S)`` -> ``(B, *S, C)``."""
    if x.ndim != 3 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"index_points wants x (B, N, C) and idx (B, ...), "
                         f"got {tuple(x.shape)} and {tuple(idx.shape)}")
    if idx.ndim == 3 and _use_kernels(x, backend):
        grouped = _pointnet2_utils().grouping_operation(x.transpose(1, 2).contiguous(), idx.int().contiguous())
        return grouped.permute(0, 2, 3, 1)
    b, n, c = x.shape
    offset = (torch.arange(b, device=idx.device) * n).view(b, *([1] * (idx.ndim - 1)))
    # index_select on the flattened batch is ~10x faster than gather on CPU
    out = x.reshape(b * n, c).index_select(0, (idx + offset).reshape(-1))
    return out.reshape(*idx.shape, c)


def three_nn_weights(fine: torch.Tensor, coarse: torch.Tensor, backend: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-distance weights of the 3 nearest ``coarse`` points for each ``fine`` point:
    ``(idx (B, N, 3), weight (B, N, 3))``, weights summing to 1 (PointNet++ interpolation)."""
    _check_points(fine, "fine")
    _check_points(coarse, "coarse")
    k = min(3, coarse.shape[1])
    if k == 3 and _use_kernels(fine, backend):
        dist, idx = _pointnet2_utils().three_nn(fine.float().contiguous(), coarse.float().contiguous())
        idx = idx.long()
    else:
        dist2, idx = knn(fine, coarse, k)
        dist = dist2.clamp(min=0).sqrt()
    recip = 1.0 / (dist.to(fine.dtype) + 1e-8)
    return idx, recip / recip.sum(-1, keepdim=True)


def interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_j weight[..., j] * features[idx[..., j]]``: ``(B, M, C)`` -> ``(B, N, C)``."""
    return (index_points(features, idx) * weight.unsqueeze(-1)).sum(-2)
