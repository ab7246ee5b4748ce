"""ImageFolder layout `<root>/<class>/<files>`: scanning it, and a Dataset that decodes its files."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.datasets import ImageDataset, Indices, Transform
from datamodules.decode import decode_image_file

# What torchvision.io.decode_image reads without extra codecs (`datamodules.decode`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")


@dataclass(frozen=True)
class FolderScan:
    root: Path
    class_names: list[str]
    files: list[str]  # relative POSIX paths, grouped by class, sorted
    sizes: list[int]  # bytes, part of each sample's identity
    labels: list[int]


def _image_files(class_dir: Path) -> list[tuple[str, int]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                path = os.path.join(dirpath, name)
                found.append((path, os.stat(path).st_size))
    return sorted(found)


def scan_image_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> FolderScan:
    """Index `<root>/<class>/**/<image>`; class order is `classes` if given, else sorted folder names.

    Image extensions match case-insensitively; hidden files and folders are skipped. A class folder that
    is missing or holds no images raises FileNotFoundError naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if classes is None:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folders in {root} (expected {root}/<class>/<image files>)")
    files, sizes, labels = [], [], []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            raise FileNotFoundError(f"class folder not found: {class_dir}")
        found = _image_files(class_dir)
        if not found:
            raise FileNotFoundError(
                f"class folder {class_dir} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        for path, size in found:
            files.append(Path(path).relative_to(root).as_posix())
            sizes.append(size)
            labels.append(label)
    return FolderScan(root, list(classes), files, sizes, labels)


class ImageFolderDataset(ImageDataset):
    """Files under `root` decoded to uint8 RGB CHW; identity of a sample = relative path + size."""

    def __init__(
        self,
        root: Path,
        files: Sequence[str] | np.ndarray,
        sizes: Sequence[int] | np.ndarray,
        labels: torch.Tensor,
        transform: Transform | None = None,
    ):
        if not len(files) == len(sizes) == len(labels):
            raise ValueError(f"{len(files)} files, {len(sizes)} sizes and {len(labels)} labels")
        self.root = Path(root)
        # numpy arrays rather than lists of str: no per-object refcounts copied into every worker.
        self.files = np.asarray(files, dtype=np.str_)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = labels
        self.transform = transform

    @classmethod
    def from_scan(cls, scan: FolderScan, transform: Transform | None = None) -> ImageFolderDataset:
        return cls(scan.root, scan.files, scan.sizes, torch.tensor(scan.labels, dtype=torch.int64), transform)

    def load_image(self, i: int) -> torch.Tensor:
        return decode_image_file(self.root / str(self.files[i]))

    def subset(self, indices: Indices) -> ImageFolderDataset:
        idx = np.asarray(indices, dtype=np.int64)
        view = copy.copy(self)  # keeps a subclass and its settings (e.g. on_bad_file)
        view.files, view.sizes, view.labels = self.files[idx], self.sizes[idx], self.labels[torch.as_tensor(idx)]
        return view

    def update_fingerprint(self, digest: hashlib._Hash) -> None:
        for name, size in zip(self.files.tolist(), self.sizes.tolist(), strict=True):
            digest.update(f"{name}\0{size}\n".encode())
