"""ImageFolderDataModule: a user's own images in `<root>/<split>/<class>/` folders, or an archive of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.archives import extract_archive, is_archive
from datamodules.base import TransferDataModule, _require
from datamodules.datasets import ImageDataset
from datamodules.decode import UnreadableImageError
from datamodules.image_files import CheckedImageFolderDataset, OnBadFile, find_unreadable
from datamodules.image_folder import scan_image_folder
from datamodules.splits import stratified_split


def class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class ImageFolderDataModule(TransferDataModule):
    """Images in class folders, one folder per split: `<root>/<split>/<class>/**/<image>`.

    Which folder becomes which split (folder names are arguments; a missing folder counts as absent):

    - training pool: `train_split`; validation: `val_split` when a test folder exists too, otherwise
      `val_fraction` of each class of the (capped) pool, chosen with `seed`;
    - test: `test_split`; without one, the `val_split` folder is the test split (ImageNet's `val/` is the
      split results are reported on) and validation is carved from the pool as above;
    - no training folder: `test_fraction` of each class of the test folder stays test, the rest becomes
      the training pool; no test folder: `test_fraction` of each class of the pool becomes test. Both
      carves are stratified and fixed by `seed`, made before the per-class cap;
    - `train_split: null`: no training data, every test image is tested (zero-shot evaluation).

    So ImageNet or Imagenette (`train/`, `val/`) trains on `train/`, validates on `val_fraction` of it and
    tests on `val/`; the Imagenette val archive (`val/` only) tests on 20 % of each class and trains and
    validates on the rest; a `train/`, `val/`, `test/` tree is used as it is.

    Every split is checked for unreadable files (non-images, empty or truncated files) when it is set up.

    Args:
        root: A folder holding the split folders, or a .tar / .tar.gz of one (extracted once into the
            cache; an archive may wrap everything in one top folder).
        classes: Class folder names in label order (a list, or one comma-separated string); None: every
            folder of the first split found, sorted (every other split must then hold the same classes).
        train_split: Folder of the training pool; null for evaluation only.
        val_split: Folder of the validation split (see above).
        test_split: Folder of the test split.
        test_fraction: Fraction of each class carved out as test where a folder is missing.
        on_bad_file: `error` stops at the first unreadable image, naming it; `skip` leaves such files out
            and warns with their count and names.
        **kwargs: TransferDataModule's arguments (batch_size, image_size, seed, max_per_class, ...);
            `test_per_class` also caps a validation folder.
    """

    def __init__(
        self,
        root: str | None = None,
        classes: list[str] | str | None = None,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = "test",
        test_fraction: float = 0.2,
        on_bad_file: OnBadFile = "error",
        **kwargs: Any,
    ):
        if root is None:
            raise ValueError("data.root is required: a folder of <split>/<class>/ images, or a .tar/.tar.gz of one")
        super().__init__(root=root, **kwargs)
        _require(0.0 < test_fraction < 1.0, "test_fraction", test_fraction, "in (0, 1)")
        _require(on_bad_file in ("error", "skip"), "on_bad_file", on_bad_file, "'error' or 'skip'")
        names = [n for n in (train_split, val_split, test_split) if n is not None]
        _require(len(set(names)) == len(names), "train_split/val_split/test_split", names, "distinct folders")
        if isinstance(classes, str):  # `--data.classes n01443537,n01629819`, as typed
            classes = [name.strip() for name in classes.split(",") if name.strip()]
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"data.classes lists a class more than once: {classes}")
        if classes is not None and len(classes) < 2:
            raise ValueError(f"data.classes must name at least two classes (a classifier needs two), got {classes}")
        self._classes = list(classes) if classes is not None else None
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.test_fraction = test_fraction
        self.on_bad_file = on_bad_file
        self.skipped_files: list[str] = []
        self._base: Path | None = None
        self._inferred: Path | None = None  # the folder the classes were read from, when not given

    # --- where the splits are ----------------------------------------------------------------------

    def _base_dir(self) -> Path:
        """The folder holding the split folders (an archive is extracted once)."""
        if self._base is None:
            assert self.root is not None
            base = self.root
            if base.is_file():
                if not is_archive(base):
                    raise ValueError(f"data.root: {base} is a file but not a .tar / .tar.gz / .tgz archive")
                base = extract_archive(base)
                inner = [base / n for n in class_folders(base)]
                if not self._has_split(base) and len(inner) == 1 and self._has_split(inner[0]):
                    base = inner[0]
            self._base = base
        return self._base

    def _has_split(self, folder: Path) -> bool:
        return any((folder / n).is_dir() for n in (self.train_split, self.val_split, self.test_split) if n)

    def split_folders(self) -> tuple[Path | None, Path | None, Path | None]:
        """(training pool, validation, test) folders that exist, after the rules of the class docstring."""
        base = self._base_dir()

        def present(name: str | None) -> Path | None:
            return base / name if name is not None and (base / name).is_dir() else None

        train, val, test = present(self.train_split), present(self.val_split), present(self.test_split)
        if test is None:
            test, val = val, None
        if train is None and test is None:
            wanted = [n for n in (self.train_split, self.val_split, self.test_split) if n]
            found = class_folders(base)
            raise FileNotFoundError(
                f"data.root: none of the split folders {wanted} is in {base} (it holds {found[:10]}); "
                "set data.train_split / data.val_split / data.test_split to the folder names"
            )
        return train, val, test

    def prepare_data(self) -> None:
        self._base_dir()  # extract an archive once, before every rank sets up

    # --- classes -----------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            first = next(f for f in self.split_folders() if f is not None)
            found = class_folders(first)
            if not found:
                raise FileNotFoundError(f"no class folders in {first} (expected {first}/<class>/<image files>)")
            if len(found) == 1:
                raise ValueError(
                    f"{first} holds one class folder ({found[0]}): a classifier needs at least two "
                    f"({first}/<class>/<image files>, one folder per class)"
                )
            self._classes = found
            self._inferred = first
        return self._classes

    def class_info(self) -> list[dict[str, Any]]:
        """The class order, one row per label (written next to the run by `callbacks.RunMetadata`)."""
        return [{"label": i, "name": name} for i, name in enumerate(self.class_names)]

    # --- loading -----------------------------------------------------------------------------------

    def _scan(self, folder: Path) -> CheckedImageFolderDataset:
        classes = self.class_names
        if self._inferred is not None and class_folders(folder) != classes:
            raise ValueError(
                f"{folder} holds class folders {class_folders(folder)[:10]}, {self._inferred} holds {classes[:10]}: "
                "every split needs the same classes (or name them with data.classes)"
            )
        scan = scan_image_folder(folder, classes)
        labels = np.asarray(scan.labels, dtype=np.int64)
        bad = find_unreadable(folder, scan.files)
        if bad and self.on_bad_file == "error":
            i = min(bad)
            others = [scan.files[j] for j in sorted(bad) if j != i]
            listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            more = f" ({len(others)} more unreadable files in {folder}: {listed})" if others else ""
            raise UnreadableImageError(folder / scan.files[i], bad[i] + more)
        keep = np.array([i for i in range(len(scan.files)) if i not in bad], dtype=np.int64)
        if bad:
            skipped = [str(folder / scan.files[i]) for i in sorted(bad)]
            self.skipped_files += skipped
            rank_zero_warn(
                f"data.on_bad_file=skip: left out {len(bad)} unreadable image files in {folder}: {skipped[:5]}"
            )
            empty = sorted(set(range(len(classes))) - set(labels[keep].tolist()))
            if empty:
                raise FileNotFoundError(f"class folder {folder / classes[empty[0]]} holds no readable images")
        return CheckedImageFolderDataset(
            folder,
            np.asarray(scan.files)[keep],
            np.asarray(scan.sizes)[keep],
            torch.from_numpy(labels[keep]),
            on_bad_file=self.on_bad_file,
        )

    def _carve(self, samples: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
        """(rest, test_fraction of each class) of `samples`."""
        rest, held = stratified_split(samples.labels.numpy(), self.test_fraction, self.seed)
        return samples.subset(rest), samples.subset(held)

    def load_splits(self) -> tuple[ImageDataset, ImageDataset]:
        train_dir, _, test_dir = self.split_folders()
        pool = self._scan(train_dir) if train_dir is not None else None
        test = self._scan(test_dir) if test_dir is not None else None
        if test is None:
            assert pool is not None
            return self._carve(pool)
        if pool is None:
            return (test.subset([]), test) if self.train_split is None else self._carve(test)
        return pool, test

    def load_val(self) -> ImageDataset | None:
        val_dir = self.split_folders()[1]
        return self._scan(val_dir) if val_dir is not None else None
