"""Where downloaded weights, extracted datasets and feature caches live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$TRANSFER_CACHE_DIR` if set, else `~/.cache/transfer` (not created here)."""
    configured = os.environ.get("TRANSFER_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "transfer"
