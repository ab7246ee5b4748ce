"""Datamodules: every vision batch is `{"pixel_values", "labels", "index"}`; multi-task ones `{task: batch}`.

The names below are imported on first use (PEP 562), so that `datamodules.transforms` and the other
plain-PyTorch modules load without Lightning (the exported-model predictor, `inference`, needs only them).
"""

from __future__ import annotations

from datamodules.lazy import lazy_names

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


__getattr__, __dir__, import_all = lazy_names(__name__, _WHERE)
