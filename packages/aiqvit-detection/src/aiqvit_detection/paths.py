"""Cache location (``$AIQVIT_CACHE``, default ``~/.cache/aiqvit``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("AIQVIT_CACHE", Path.home() / ".cache" / "aiqvit"))
