"""Random images with a learnable class signal, for tests and smoke runs (no files, milliseconds)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.base import TransferDataModule
from datamodules.datasets import ImageDataset, TensorImageDataset
from datamodules.transforms import Preprocessing

NATIVE_SIZE = 16


class SyntheticDataModule(TransferDataModule):
    """Each class has its own colour and stripe pattern, plus pixel noise; generated from `seed`.

    Args:
        num_classes: Number of classes.
        num_samples: Images in the training pool (split into train and val).
        num_test_samples: Images in the test split; None: as many as `num_samples`.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        val_fraction: Fraction of the training pool held out, stratified, for validation.
    """

    uses_root = False
    default_preprocessing = Preprocessing(image_size=NATIVE_SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def __init__(
        self,
        num_classes: int = 4,
        num_samples: int = 64,
        num_test_samples: int | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.25,
        **kwargs: Any,
    ):
        if num_classes < 2:
            raise ValueError(f"data.num_classes must be >= 2, got {num_classes}")
        if num_samples < num_classes:
            raise ValueError(f"data.num_samples must be >= data.num_classes ({num_classes}), got {num_samples}")
        if num_test_samples is not None and num_test_samples < 1:
            raise ValueError(f"data.num_test_samples must be >= 1 or null, got {num_test_samples}")
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_fraction=val_fraction, **kwargs)
        self._num_classes = num_classes
        self.num_samples = num_samples
        self.num_test_samples = num_test_samples if num_test_samples is not None else num_samples

    @property
    def class_names(self) -> list[str]:
        return [f"class_{c}" for c in range(self._num_classes)]

    def load_splits(self) -> tuple[ImageDataset, ImageDataset]:
        rng = np.random.default_rng(self.seed)
        total = self.num_samples + self.num_test_samples
        labels = np.concatenate(  # balanced within the pool and within the test split
            [rng.permutation(np.arange(n) % self._num_classes) for n in (self.num_samples, self.num_test_samples)]
        )
        colours = rng.uniform(0.2, 0.8, size=(self._num_classes, 3, 1, 1))
        grid = np.arange(NATIVE_SIZE) / NATIVE_SIZE
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        patterns = np.stack(
            [np.sin(2 * np.pi * (1 + c // 2) * (xs if c % 2 else ys)) for c in range(self._num_classes)]
        )
        noise = rng.normal(0.0, 0.1, size=(total, 3, NATIVE_SIZE, NATIVE_SIZE))
        pixels = colours[labels] + 0.15 * patterns[labels][:, None] + noise
        images = torch.from_numpy(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8))
        everything = TensorImageDataset(images, torch.from_numpy(labels.astype(np.int64)))
        return everything.subset(range(self.num_samples)), everything.subset(range(self.num_samples, total))
