"""Low-rank weight compensation (AILoC, METHOD.md section 2): ``W = W0 + B @ A``."""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_CANDIDATE_RANKS = (10, 20, 50, 100, 150)


def cap_ranks(candidates, in_features: int, out_features: int) -> list[int]:
    """Candidate ranks capped at ``min(in, out)``, deduplicated, ascending."""
    limit = min(in_features, out_features)
    return sorted({min(int(r), limit) for r in candidates if int(r) > 0})


class LowRankBranch(nn.Module):
    """``B (out x r) @ A (r x in)``; init A Kaiming-uniform, B = 0 (the branch starts at zero)."""

    def __init__(self, in_features: int, out_features: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.rank = rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) bound, as nn.Linear/LoRA
        with torch.no_grad():
            self.A.uniform_(-bound, bound, generator=generator)

    def extra_repr(self) -> str:
        return f"rank={self.rank}"

    def delta(self) -> torch.Tensor:
        return self.B @ self.A


class RankSearchBranch(nn.Module):
    """Candidate branches mixed by ``softmax(alpha)`` (DARTS).

    Theta updates use drop-path in one of two forms: ``active = j`` keeps a single sampled branch,
    unweighted, so that every branch learns to compensate the error alone (single-path); or, with
    ``drop = True``, the softmax mixture with each branch dropped with ``drop_prob``. alpha updates
    use the full mixture (``active = None``, ``drop = False``).
    """

    def __init__(self, in_features: int, out_features: int, ranks, generator: torch.Generator | None = None,
                 drop_prob: float = 0.1):
        super().__init__()
        self.ranks = list(ranks)
        self.branches = nn.ModuleList(LowRankBranch(in_features, out_features, r, generator) for r in self.ranks)
        self.alpha = nn.Parameter(torch.zeros(len(self.ranks)))
        self.drop_prob = drop_prob
        self.drop = False
        self.active: int | None = None  # single-path Theta step: only this branch, unweighted
        self._generator = generator

    def extra_repr(self) -> str:
        return f"ranks={self.ranks}"

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.alpha, 0)

    def expected_rank(self) -> torch.Tensor:
        return (self.weights() * torch.tensor(self.ranks, dtype=self.alpha.dtype)).sum()

    def delta(self) -> torch.Tensor:
        if self.active is not None:
            return self.branches[self.active].delta()
        w = self.weights()
        keep = torch.ones_like(w)
        if self.drop and self.drop_prob > 0:
            keep = (torch.rand(len(self.ranks), generator=self._generator) >= self.drop_prob).to(w.dtype)
        return sum(w[j] * keep[j] * b.delta() for j, b in enumerate(self.branches))

    def chosen_index(self) -> int:
        return int(torch.argmax(self.alpha.detach()))

    def theta_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.branches for p in (b.A, b.B)]

    def to_single(self, keep_weights: bool = True, generator: torch.Generator | None = None,
                  single_path: bool = True) -> LowRankBranch:
        """The ``argmax alpha`` branch alone; it keeps its searched A, B (in mixture training scaled
        by its mixing weight, so its contribution is unchanged) or restarts from the LoRA init."""
        j = self.chosen_index()
        src = self.branches[j]
        out = LowRankBranch(src.A.shape[1], src.B.shape[0], src.rank, generator)
        if keep_weights:
            with torch.no_grad():
                out.A.copy_(src.A)
                out.B.copy_(src.B if single_path else src.B * self.weights()[j])
        return out
