from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from datamodules import DigitsDataModule, Preprocessing

GREY = Preprocessing(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(num_workers=0, batch_size=32, preprocessing=GREY)
    dm.setup()
    return dm


def test_sizes_and_stratified_fixed_test_split(digits):
    sizes = {s: len(d) for s, d in digits.datasets.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] / 1797 - 0.2) < 0.005
    assert abs(sizes["val"] / (sizes["train"] + sizes["val"]) - 0.1) < 0.01
    per_class = torch.bincount(digits.datasets["test"].labels, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # 173..183 digits per class, 20 % each


def test_test_split_is_the_same_for_every_seed(digits):
    other = DigitsDataModule(seed=7, preprocessing=GREY)
    assert other.fingerprint("test") == digits.fingerprint("test")
    assert other.fingerprint("val") != digits.fingerprint("val")


def test_splits_partition_the_dataset(digits):
    grey = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)
    everything = Counter(image.tobytes() for image in grey)
    split_images = torch.cat([digits.datasets[s].images[:, 0] for s in ("train", "val", "test")]).numpy()
    assert Counter(image.tobytes() for image in split_images) == everything  # none lost, none twice


def test_batches_are_rgb_grey_and_resized(digits):
    batch = next(iter(digits.eval_dataloader("test")))
    pixels = batch["pixel_values"]
    assert pixels.shape == (32, 3, 16, 16) and pixels.dtype == torch.float32
    assert torch.equal(pixels[:, 0], pixels[:, 1]) and torch.equal(pixels[:, 1], pixels[:, 2])
    assert pixels.min() >= -1 and pixels.max() <= 1
    images = digits.datasets["train"].images
    assert images.dtype == torch.uint8 and images.max() == 255 and images.min() == 0
    assert set(torch.cat([b["labels"] for b in digits.test_dataloader()]).tolist()) == set(range(10))


def test_digits_are_never_flipped_and_ignore_root(tmp_path):
    assert DigitsDataModule.flip is False
    dm = DigitsDataModule(root=str(tmp_path / "ignored"))
    assert dm.num_classes == 10 and dm.class_names[3] == "3"
