"""Datamodules: every vision batch is `{"pixel_values", "labels", "index"}`; multi-task ones `{task: batch}`."""

from datamodules.base import TransferDataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.digits import DigitsDataModule
from datamodules.folders import ImageFolderDataModule
from datamodules.glue import GLUEDataModule
from datamodules.imagenet_subset import ImageNetSubsetDataModule
from datamodules.multi_task import MultiTaskDataModule
from datamodules.relabel import RelabeledDataModule
from datamodules.synthetic import SyntheticDataModule
from datamodules.text import TextDataModule
from datamodules.transforms import Preprocessing

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "GLUEDataModule",
    "ImageFolderDataModule",
    "ImageNetSubsetDataModule",
    "MultiTaskDataModule",
    "Preprocessing",
    "RelabeledDataModule",
    "SyntheticDataModule",
    "TextDataModule",
    "TransferDataModule",
]
