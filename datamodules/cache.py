"""Where downloaded weights, extracted datasets and feature caches live, and how cache files are written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


def cache_root() -> Path:
    """`$TRANSFER_CACHE_DIR` if set, else `~/.cache/transfer` (not created here)."""
    configured = os.environ.get("TRANSFER_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "transfer"


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(handle)` into a temporary file beside `path`, then rename: readers (other runs, other ranks)
    see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomically(obj: object, path: Path) -> None:
    """`torch.save(obj)` to `path`, atomically."""
    write_atomically(path, lambda handle: torch.save(obj, handle))
