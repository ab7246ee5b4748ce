"""Datamodules: every vision batch is `{"pixel_values", "labels", "index"}`; multi-task ones `{task: batch}`.

The names below are imported on first use (PEP 562), so that `datamodules.transforms` and the other
plain-PyTorch modules load without Lightning (the exported-model predictor, `inference`, needs only them).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CIFAR10DataModule": "cifar10",
    "DigitsDataModule": "digits",
    "GLUEDataModule": "glue",
    "ImageFolderDataModule": "folders",
    "ImageNetSubsetDataModule": "imagenet_subset",
    "MultiTaskDataModule": "multi_task",
    "Preprocessing": "transforms",
    "RelabeledDataModule": "relabel",
    "SyntheticDataModule": "synthetic",
    "TextDataModule": "text",
    "TransferDataModule": "base",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


def import_all() -> None:
    """Import every name above (e.g. so that class paths of checkpoints and configs find all subclasses)."""
    for name in _WHERE:
        __getattr__(name)
