"""Progress bars through tqdm when it is installed (optional), else a silent passthrough."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")

try:  # pragma: no cover - depends on the environment
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, enabled: bool = True, leave: bool = False):
    if not enabled or _tqdm is None:
        return iterable
    return _tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)
