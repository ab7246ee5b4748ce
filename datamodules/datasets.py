"""Datasets yielding the vision batch dict, and the in-memory ones (tensor images, cached features)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.transforms import apply_transform

Transform = Callable[[torch.Tensor], torch.Tensor]
Indices = Sequence[int] | np.ndarray


class ImageDataset(Dataset):
    """Labelled images as uint8 CHW tensors, returned as `{"pixel_values", "labels", "index"}`.

    An index that carries a seed (`SampleIndex`, from the training sampler) seeds the random transform.

    Subclasses say how to load image `i`, how to take a subset, and what identifies each sample (for
    fingerprints: content or relative path, never an absolute path or mtime).
    """

    labels: torch.Tensor  # int64 [N]
    transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.load_image(i)
        seed = getattr(i, "seed", None)  # training indices carry their augmentation seed (SampleIndex)
        sample = {"pixel_values": image, "labels": self.labels[i], "index": torch.tensor(i, dtype=torch.int64)}
        if self.transform is not None:
            sample["pixel_values"] = apply_transform(self.transform, image, seed)
        elif seed is not None:  # a batched augmentation draws with it (datamodules.batch_augment)
            sample["seed"] = torch.tensor(seed, dtype=torch.int64)
        return sample

    def with_transform(self, transform: Transform | None) -> ImageDataset:
        view = copy.copy(self)  # shares the underlying samples
        view.transform = transform
        return view

    def load_image(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, indices: Indices) -> ImageDataset:
        raise NotImplementedError

    def update_fingerprint(self, digest: hashlib._Hash) -> None:
        """Feed the identity of every sample, in order, into `digest`."""
        raise NotImplementedError


class TensorImageDataset(ImageDataset):
    """Images held in memory as one uint8 tensor [N, 3, H, W] (CIFAR-10 batches, digits, synthetic)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Transform | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {list(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    @classmethod
    def decoded(cls, samples: ImageDataset) -> TensorImageDataset:
        """`samples` decoded once into memory (they must all have one size)."""
        if isinstance(samples, TensorImageDataset):
            return samples
        images = [samples.load_image(i) for i in range(len(samples))]
        sizes = sorted({tuple(image.shape) for image in images})
        if len(sizes) > 1:
            raise ValueError(
                f"data.in_memory needs images of one size, found {sizes[:3]}{'...' if len(sizes) > 3 else ''}"
            )
        stacked = torch.stack(images) if images else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        return cls(stacked, samples.labels, samples.transform)

    def load_image(self, i: int) -> torch.Tensor:
        return self.images[i]

    def subset(self, indices: Indices) -> TensorImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(self.images[idx].contiguous(), self.labels[idx], self.transform)

    def update_fingerprint(self, digest: hashlib._Hash) -> None:
        digest.update(str(list(self.images.shape)).encode())
        digest.update(self.images.contiguous().numpy().tobytes())


class FeatureDataset(Dataset):
    """Precomputed features [N, D] with labels; `__getitems__` gathers a whole batch in one indexing op."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[i], "labels": self.labels[i], "index": torch.tensor(i)}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return {"features": self.features[idx], "labels": self.labels[idx], "index": idx}


def collate_batched(batch: Any) -> Any:
    """Collate for datasets whose `__getitems__` already returns a batch."""
    return batch
