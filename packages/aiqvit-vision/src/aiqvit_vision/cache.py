"""Where downloaded or converted artefacts are cached: ``$AIQVIT_CACHE`` or ``~/.cache/aiqvit``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("AIQVIT_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "aiqvit"
    path.mkdir(parents=True, exist_ok=True)
    return path
