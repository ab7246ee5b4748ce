import shutil
import tarfile
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from shared_files import require_shared
from torchvision.datasets import CIFAR10
from torchvision.io import encode_jpeg

from datamodules import CIFAR10DataModule, Preprocessing
from datamodules.cifar10 import CIFAR10_CLASSES

SMALL = Preprocessing(image_size=32)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tree(tmp_path) -> Path:
    """Real JPEGs in CIFAR's folder layout: 3 train and 2 test images per class, coloured by class."""
    root = tmp_path / "cifar"
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 3), ("test", 2)):
        for label, name in enumerate(CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                noise = torch.randint(0, 30, (3, 32, 32), generator=generator, dtype=torch.uint8)
                image = noise + torch.tensor([label * 20, 100, 250 - label * 20], dtype=torch.uint8)[:, None, None]
                (root / split / name / f"{k:04d}.jpg").write_bytes(encode_jpeg(image).numpy().tobytes())
    return root


def make(root, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(root=str(root), num_workers=0, batch_size=4, preprocessing=SMALL, **kwargs)


def test_class_names_follow_torchvision_order():
    assert CIFAR10DataModule(download=False).class_names == list(CIFAR10_CLASSES)
    assert CIFAR10DataModule(download=False).num_classes == 10
    assert list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES)  # folder names sort into label order


def test_image_folder_source(tree):
    dm = make(tree)
    dm.setup()
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 20, "val": 10, "test": 20}
    test = dm.datasets["test"]
    assert [test.files[i].split("/")[0] for i in range(0, 20, 2)] == list(CIFAR10_CLASSES)
    assert test.labels.tolist() == [c for c in range(10) for _ in range(2)]
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    # labels match the folder the JPEG came from: the red channel encodes the class
    raw = next(iter(dm.eval_dataloader("test")))
    assert raw["labels"].tolist() == [0, 0, 1, 1]
    assert raw["pixel_values"][2, 0].mean() > raw["pixel_values"][0, 0].mean()


def test_train_per_class_caps_the_pool(tree):
    dm = make(tree, train_per_class=2, val_fraction=0.5)
    dm.setup()
    assert len(dm.datasets["train"]) == 10 and len(dm.datasets["val"]) == 10 and len(dm.datasets["test"]) == 20


@pytest.mark.parametrize("wrapped", [False, True])
def test_tar_gz_source_matches_the_folder(tree, tmp_path, cache, wrapped):
    archive = tmp_path / "cifar-copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=f"cifar10/{split}" if wrapped else split)
    from_archive = make(archive)
    from_archive.setup()
    assert len(from_archive.datasets["test"]) == 20
    assert from_archive.fingerprint() == make(tree).fingerprint()  # identity is relative path + size
    assert [p.name.startswith("cifar-copy-") for p in (cache / "data").iterdir()] == [True]


def test_archive_without_the_layout_is_an_error(tmp_path):
    archive = tmp_path / "other.tar.gz"
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "stuff", arcname="stuff")
    with pytest.raises(FileNotFoundError, match=r"data\.root: archive .*other\.tar\.gz .*train/ and test/"):
        make(archive).setup()


def test_wrong_class_folders_are_an_error_naming_the_path(tree):
    shutil.move(tree / "train" / "truck", tree / "train" / "lorry")
    with pytest.raises(ValueError, match=r"cifar/train: class folders must be .*found .*'lorry'"):
        make(tree).setup()


def test_missing_root_names_data_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.root: .*/no-such-dir does not exist"):
        CIFAR10DataModule(root=str(tmp_path / "no-such-dir"))


def test_offline_without_batches_says_to_pass_data_root(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match=r"download is off.*--data\.root"):
        make(tmp_path / "empty", download=False).setup()
    with pytest.raises(RuntimeError, match=rf"not in {cache}/data/cifar10 .*--data\.root"):
        CIFAR10DataModule(download=False).setup()


def test_failed_download_says_to_pass_data_root(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR10, "download", offline)
    (tmp_path / "empty").mkdir()
    dm = make(tmp_path / "empty", download=True)
    with pytest.raises(RuntimeError, match=r"the download failed: .*no network.*--data\.root .*\.tar\.gz"):
        dm.prepare_data()


@pytest.mark.slow
def test_real_cifar10_jpeg_archive(monkeypatch, shared):
    archive = shared / "data" / "cifar10-jpeg.tar.gz"
    require_shared(archive, "the CIFAR-10 JPEG archive")
    monkeypatch.undo()  # the default cache, so later runs reuse the extraction
    start = time.perf_counter()
    full = CIFAR10DataModule(root=str(archive), num_workers=0, preprocessing=SMALL)
    full.setup()
    print(f"extract + setup: {time.perf_counter() - start:.1f}s")
    sizes = {s: len(d) for s, d in full.datasets.items()}
    assert sizes["train"] + sizes["val"] == 50_000 and sizes["test"] == 10_000 and sizes["val"] == 5_000
    test = full.datasets["test"]
    assert test.files[0].startswith("airplane/") and test.files[-1].startswith("truck/")
    assert torch.bincount(test.labels).tolist() == [1000] * 10

    small = CIFAR10DataModule(root=str(archive), num_workers=0, preprocessing=SMALL, train_per_class=20)
    small.setup()
    assert torch.bincount(small.datasets["train"].labels).tolist() == [18] * 10
    assert torch.bincount(small.datasets["val"].labels).tolist() == [2] * 10
    batch = next(iter(small.train_dataloader()))
    assert batch["pixel_values"].shape == (64, 3, 32, 32) and batch["labels"].max() < 10
    again = CIFAR10DataModule(root=str(archive), preprocessing=SMALL, train_per_class=20)
    assert again.fingerprint("train") == small.fingerprint("train")
