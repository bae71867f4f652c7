"""Run the model over calibration batches with hooks that record statistics, removing them afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .progress import progress


def run_with_hooks(run: Callable[[Any], Any], batches: list, hooks: list[tuple[nn.Module, Callable]],
                   desc: str, show: bool = False, pre: bool = False) -> None:
    """``run(batch)`` for every batch while each ``(module, hook)`` is registered as a forward hook
    (``pre``: a forward pre-hook); the hooks are removed even if a batch fails."""
    register = nn.Module.register_forward_pre_hook if pre else nn.Module.register_forward_hook
    handles = [register(module, hook) for module, hook in hooks]
    try:
        for batch in progress(batches, desc=desc, enabled=show):
            run(batch)
    finally:
        for h in handles:
            h.remove()
