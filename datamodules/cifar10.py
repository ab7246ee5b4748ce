"""CIFAR-10 from an ImageFolder tree, a .tar.gz of one, or torchvision's binary batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5

from datamodules.archives import extract_archive
from datamodules.base import TransferDataModule
from datamodules.cache import cache_root
from datamodules.datasets import ImageDataset, TensorImageDataset
from datamodules.image_folder import ImageFolderDataset, scan_image_folder

# torchvision's CIFAR10.classes order; the folder names sort into the same order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCHES_FOLDER = "cifar-10-batches-py"


def _is_image_tree(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


class CIFAR10DataModule(TransferDataModule):
    """CIFAR-10: 10 classes of 32x32 images; "test" is the official test split, train/val the official train.

    Args:
        root: A folder with `train/<class>/` and `test/<class>/`, a .tar.gz of such a folder (extracted
            once into the cache), or a torchvision CIFAR-10 root; None: torchvision batches in the cache.
        download: Let torchvision download the binary batches when they are missing (needs internet).
    """

    def __init__(self, root: str | None = None, download: bool = True, **kwargs: Any):
        super().__init__(root=root, **kwargs)
        self.download = download

    @property
    def class_names(self) -> list[str]:
        return list(CIFAR10_CLASSES)

    def prepare_data(self) -> None:
        # Extract or download once (Lightning calls this on one process) before every rank runs setup.
        kind, path = self._locate()
        if kind == "batches":
            self._batches(path, train=True)
            self._batches(path, train=False)

    def _locate(self) -> tuple[str, Path]:
        """("folder", dir with train/ and test/) or ("batches", torchvision root)."""
        if self.root is None:
            return "batches", cache_root() / "data" / "cifar10"
        if self.root.is_dir():
            return ("folder" if _is_image_tree(self.root) else "batches"), self.root
        extracted = extract_archive(self.root)
        candidates = [extracted, *sorted(p for p in extracted.iterdir() if p.is_dir())]
        for path in candidates:
            if _is_image_tree(path):
                return "folder", path
            if (path / BATCHES_FOLDER).is_dir():
                return "batches", path
        raise FileNotFoundError(
            f"data.root: archive {self.root} (extracted to {extracted}) holds neither train/ and test/ "
            f"class folders nor {BATCHES_FOLDER}/"
        )

    def load_splits(self) -> tuple[ImageDataset, ImageDataset]:
        kind, path = self._locate()
        if kind == "folder":
            return self._folder(path / "train"), self._folder(path / "test")
        return self._batches(path, train=True), self._batches(path, train=False)

    def _folder(self, path: Path) -> ImageFolderDataset:
        scan = scan_image_folder(path)
        if tuple(scan.class_names) != CIFAR10_CLASSES:
            raise ValueError(
                f"{path}: class folders must be exactly the ten CIFAR-10 classes {list(CIFAR10_CLASSES)}, "
                f"found {scan.class_names}"
            )
        return ImageFolderDataset.from_scan(scan)

    def _batches(self, path: Path, train: bool) -> TensorImageDataset:
        check_batch_files(path / BATCHES_FOLDER)
        try:
            data = CIFAR10(str(path), train=train, download=self.download)
        except (OSError, RuntimeError) as exc:
            how = "the download failed" if self.download else "download is off (data.download=false)"
            raise RuntimeError(
                f"CIFAR-10 batches are not in {path} and {how}: {exc}. Offline? Pass --data.root pointing "
                "at a local copy: a folder with train/<class>/ and test/<class>/ images, or a .tar.gz of "
                "one (e.g. ../shared/data/cifar10-jpeg.tar.gz)."
            ) from exc
        if tuple(data.classes) != CIFAR10_CLASSES:
            raise ValueError(f"{path}: unexpected CIFAR-10 class list {data.classes}")
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
        return TensorImageDataset(images, torch.tensor(data.targets, dtype=torch.int64))


def check_batch_files(folder: Path) -> None:
    """Every CIFAR-10 batch file present in `folder` has its published MD5, checked before anything unpickles
    it. (torchvision checks every file for either split and sends a corrupt one to the download, which
    offline reads as "batches missing".)"""
    expected = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    for name, md5 in expected:
        file = folder / name
        if file.is_file() and (actual := calculate_md5(str(file))) != md5:
            raise ValueError(
                f"data.root: {file} fails its checksum (MD5 {actual}, CIFAR-10's is {md5}): the file is corrupt "
                "or not the official batch, and was not read. Delete it (it is downloaded again) or replace it."
            )
