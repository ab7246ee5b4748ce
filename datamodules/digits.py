"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from datamodules.base import TransferDataModule
from datamodules.datasets import ImageDataset, TensorImageDataset
from datamodules.splits import stratified_split

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed, so runs with different seeds are scored on one test set


class DigitsDataModule(TransferDataModule):
    """Handwritten digits 0-9 (grey 8x8 replicated to RGB, resized to `image_size`, never flipped).

    "test" is a fixed stratified 20 % (always seed 0); train/val are split from the rest with `seed`.

    `root` is unused: the data ships with scikit-learn.
    """

    flip = False
    uses_root = False

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def load_splits(self) -> tuple[ImageDataset, ImageDataset]:
        digits = load_digits()
        grey = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8))
        images = grey[:, None].expand(-1, 3, -1, -1).contiguous()
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        everything = TensorImageDataset(images, labels)
        pool, test = stratified_split(labels.numpy(), TEST_FRACTION, TEST_SEED)
        return everything.subset(pool), everything.subset(test)
