"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from datamodules.base import TransferDataModule
from datamodules.datasets import ImageDataset, TensorImageDataset
from datamodules.splits import stratified_split
from datamodules.transforms import Preprocessing

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed, so runs with different seeds are scored on one test set


class DigitsDataModule(TransferDataModule):
    """Handwritten digits 0-9 (grey 8x8 replicated to RGB, resized to `image_size`, never flipped).

    "test" is a fixed stratified 20 % (always seed 0); train/val are split from the rest with `seed`.

    Args:
        root: Unused (the data ships with scikit-learn); kept so configs can swap datamodules.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        val_fraction: Fraction of the (capped) training pool held out, stratified, for validation.
        seed: Data seed for the per-class cap and the validation split (independent of the training seed).
        augment: Random crop on the training split (no flips: digits are not mirror-symmetric).
        image_size: Side of the square model input; None uses `preprocessing.image_size`.
        preprocessing: Resolution, mean/std and interpolation the backbone expects (linked from the model).
        train_per_class: Cap on images per class in the training pool (balanced, chosen with `seed`).
        max_per_class: Same as `train_per_class`; give either.
    """

    flip = False
    uses_root = False

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        image_size: int | None = None,
        preprocessing: Preprocessing | None = None,
        train_per_class: int | None = None,
        max_per_class: int | None = None,
    ):
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            seed=seed,
            augment=augment,
            image_size=image_size,
            preprocessing=preprocessing,
            train_per_class=train_per_class,
            max_per_class=max_per_class,
        )

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
