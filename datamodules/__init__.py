"""Datamodules: every vision batch is `{"pixel_values", "labels", "index"}`."""

from datamodules.base import TransferDataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.digits import DigitsDataModule
from datamodules.folders import ImageFolderDataModule
from datamodules.glue import GLUEDataModule
from datamodules.imagenet_subset import ImageNetSubsetDataModule
from datamodules.synthetic import SyntheticDataModule
from datamodules.text import TextDataModule
from datamodules.transforms import Preprocessing

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "GLUEDataModule",
    "ImageFolderDataModule",
    "ImageNetSubsetDataModule",
    "Preprocessing",
    "SyntheticDataModule",
    "TextDataModule",
    "TransferDataModule",
]
