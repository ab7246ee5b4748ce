"""Reading a checkpoint of one of our runs, given by a config key (`model.backbone_ckpt`, `model.teacher_ckpt`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path: str, key: str) -> tuple[Path, Any]:
    """The file and its contents, loaded with `weights_only=True` on the CPU; errors name `key` and the path."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist")
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{key}: cannot read {file}: {error}") from error
