"""TransferDataModule: splits, transforms, loaders, fingerprints and the feature-cache hook.

A concrete datamodule only says what its classes are and how to load its official training pool and
test split (`load_splits`); everything else (per-class cap, stratified validation split, label checks,
transforms, loaders) lives here once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.batch_augment import BatchAugment
from datamodules.corruptions import MIN_SIDE, SEVERITIES, cached_corruption, corruption_names
from datamodules.datasets import ImageDataset, TensorImageDataset
from datamodules.feature_inputs import FeatureInputs
from datamodules.metric_defaults import default_metrics
from datamodules.samplers import EpochSeededRandomSampler, make_loader
from datamodules.splits import cap_per_class, stratified_split, validate_labels
from datamodules.transforms import MultiView, Preprocessing, image_transform, normalize, resize_crop, simclr_transform

SPLITS = ("train", "val", "test")
FINGERPRINT_VERSION = "transfer-data-v1"


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"data.{key} must be {expected}, got {value!r}")


class TransferDataModule(FeatureInputs, L.LightningDataModule):
    """Base of the vision datamodules: batches are `{"pixel_values", "labels", "index"}` dicts.

    With an input encoder set (`set_input_encoder`), train and val serve precomputed features instead.

    Args:
        root: Dataset location (folder or archive, depending on the dataset); None for the default.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        val_fraction: Fraction of the (capped) training pool held out, stratified, for validation.
        seed: Data seed for the per-class cap and the validation split (independent of the training seed).
        augment: Random crop (and flip where the data allows it) on the training split.
        crop_scale: Training crops as `RandomResizedCrop` of `crop_scale` to all of the image's area (the
            ImageNet recipe; 0.08 there, 0.35 is common for fine-tuning); None: the CIFAR recipe's
            reflect-padded random crop of 1/8 of the side.
        views: Augmented views per training image. 2 or more (contrastive pretraining) makes the training
            split yield `pixel_values` [views, C, H, W] per image, each view drawn with the SimCLR recipe
            (`simclr_transform`), and drops an incomplete last batch; validation, test and feature
            extraction stay single un-augmented images.
        image_size: Side of the square model input; None uses `preprocessing.image_size`.
        preprocessing: Resolution, mean/std and interpolation the backbone expects (linked from the model).
        train_per_class: Cap on images per class in the training pool (balanced, chosen with `seed`).
        max_per_class: Same as `train_per_class` (the ImageNet-subset name); give either.
        test_per_class: Cap on test images per class (balanced, chosen with `seed`) for quicker evaluation;
            None tests on the whole test split.
        in_memory: Decode every split once into one uint8 tensor (images of one size, such as CIFAR-10);
            epochs then read memory instead of decoding files.
        batched_augmentation: Augment and normalise each training batch at once (`BatchAugment`: the
            same recipe, one op per batch instead of per image); for images of one size, not with views.
        corruptions: Also test on corrupted copies of the test split (`datamodules.corruptions`, Hendrycks &
            Dietterich 2019): corruption names or groups (`common` is the benchmark's 15; `noise`, `blur`,
            `weather`, `digital`, `validation`, `all`). Logged as `test/<corruption>/<severity>/acc`, the
            mean over severities `test/<corruption>/acc` and over every set `test/corruptions/acc`; the
            clean test split stays `test/acc`. None: clean only.
        severities: Severities (1-5) of each corruption.
    """

    flip: ClassVar[bool] = True
    uses_root: ClassVar[bool] = True
    default_preprocessing: ClassVar[Preprocessing] = Preprocessing()

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        augment: bool = True,
        crop_scale: float | None = None,
        views: int = 1,
        image_size: int | None = None,
        preprocessing: Preprocessing | None = None,
        train_per_class: int | None = None,
        max_per_class: int | None = None,
        test_per_class: int | None = None,
        in_memory: bool = False,
        batched_augmentation: bool = False,
        corruptions: list[str] | None = None,
        severities: list[int] | None = None,
    ):
        super().__init__()
        _require(batch_size >= 1, "batch_size", batch_size, ">= 1")
        _require(num_workers >= 0, "num_workers", num_workers, ">= 0")
        _require(0.0 < val_fraction < 1.0, "val_fraction", val_fraction, "in (0, 1)")
        _require(seed >= 0, "seed", seed, ">= 0")
        _require(views >= 1, "views", views, ">= 1")
        _require(crop_scale is None or 0.0 < crop_scale <= 1.0, "crop_scale", crop_scale, "in (0, 1] or null")
        _require(crop_scale is None or not batched_augmentation, "crop_scale", crop_scale,
                 "null with data.batched_augmentation=true (batched augmentation crops the CIFAR way)")  # fmt: skip
        _require(augment or views == 1, "views", views, "1 with data.augment=false (identical views teach nothing)")
        _require(image_size is None or image_size >= 1, "image_size", image_size, ">= 1 or null")
        _require(
            not batched_augmentation or views == 1, "batched_augmentation", batched_augmentation, "false with views > 1"
        )
        caps = (
            ("train_per_class", train_per_class),
            ("max_per_class", max_per_class),
            ("test_per_class", test_per_class),
        )
        for key, cap in caps:
            _require(cap is None or cap >= 1, key, cap, ">= 1 or null")
        if train_per_class is not None and max_per_class is not None and train_per_class != max_per_class:
            raise ValueError(
                f"data.train_per_class={train_per_class} and data.max_per_class={max_per_class} disagree: "
                "they name the same per-class cap, give only one"
            )
        severities = list(SEVERITIES) if severities is None else severities
        bad = [s for s in severities if s not in SEVERITIES]
        _require(bool(severities) and not bad and len(set(severities)) == len(severities), "severities", severities,
                 f"distinct values in {list(SEVERITIES)}")  # fmt: skip
        self.corruptions = corruption_names(corruptions) if corruptions is not None else []
        self.severities = sorted(severities)
        if root is not None and self.uses_root and not Path(root).expanduser().exists():
            raise FileNotFoundError(f"data.root: {root} does not exist")
        self.root = Path(root).expanduser() if root is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.augment = augment
        self.crop_scale = crop_scale
        self.views = views
        self.preprocessing = preprocessing if preprocessing is not None else self.default_preprocessing
        self.image_size = image_size if image_size is not None else self.preprocessing.image_size
        if self.corruptions:
            _require(self.image_size >= MIN_SIDE, "image_size", self.image_size, f">= {MIN_SIDE} to corrupt images")
        self.train_per_class = train_per_class if train_per_class is not None else max_per_class
        self.test_per_class = test_per_class
        self.in_memory = in_memory
        self.batched_augmentation = batched_augmentation
        self.datasets: dict[str, Dataset] = {}
        self._samples: dict[str, ImageDataset] = {}  # split -> samples without transform
        self._fingerprints: dict[str, str] = {}

    # --- what a concrete datamodule provides -------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Class names in label order; known without reading the data."""
        raise NotImplementedError

    def load_splits(self) -> tuple[ImageDataset, ImageDataset]:
        """(training pool, test split) without transforms; the pool is capped and split here."""
        raise NotImplementedError

    def load_val(self) -> ImageDataset | None:
        """A validation split of its own (capped like the test split); None: carved from the pool."""
        return None

    # --- shared machinery --------------------------------------------------------------------------

    def __repr__(self) -> str:
        # Lightning's default __str__ calls every *_dataloader(), which would load (or download) data.
        shown = {"root": str(self.root) if self.root is not None else None, "batch_size": self.batch_size}
        shown |= {"image_size": self.image_size, "train_per_class": self.train_per_class, "seed": self.seed}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def metrics(self) -> list[str]:
        """Official metrics of this data (the model logs them and their mean as `score`)."""
        return default_metrics(regression=False)

    @property
    def val_names(self) -> list[str]:
        """One name per validation set (suffixes of the metric names); a single unnamed set here."""
        return [""]

    @property
    def shift_sets(self) -> list[str]:
        """Names of the corrupted test sets (`<corruption>/<severity>`), served after the clean test split."""
        return [f"{name}/{severity}" for name in self.corruptions for severity in self.severities]

    @property
    def max_per_class(self) -> int | None:
        return self.train_per_class

    def input_spec(self) -> dict[str, Any]:
        """How an input is made ready for the model at evaluation (resize the short side, centre crop, normalise)
        and the label names: plain data, recorded in checkpoints for `transfer export` and `inference`."""
        p = self.preprocessing
        return {"type": "image", "image_size": self.image_size, "mean": list(p.mean), "std": list(p.std),
                "interpolation": p.interpolation, "labels": list(self.class_names)}  # fmt: skip

    def transform(self, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        if train and self.views > 1:
            return MultiView(simclr_transform(self.preprocessing, self.image_size, flip=self.flip), self.views)
        return image_transform(self.preprocessing, self.image_size, train=train, augment=self.augment, flip=self.flip,
                               crop_scale=self.crop_scale)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pool, test = self.load_splits()
        val = self.load_val()
        for split, samples in (("train", pool), ("val", val), ("test", test)):
            if samples is not None:
                validate_labels(samples.labels, self.num_classes, split)
        pool = pool.subset(cap_per_class(pool.labels.numpy(), self.train_per_class, self.seed))
        test = test.subset(cap_per_class(test.labels.numpy(), self.test_per_class, self.seed))
        if val is None:  # carved from the capped pool
            train_idx, val_idx = stratified_split(pool.labels.numpy(), self.val_fraction, self.seed)
            pool, val = pool.subset(train_idx), pool.subset(val_idx)
        else:
            val = val.subset(cap_per_class(val.labels.numpy(), self.test_per_class, self.seed))
        self._samples = {"train": pool, "val": val, "test": test}
        if self.in_memory:
            self._samples = {split: TensorImageDataset.decoded(samples) for split, samples in self._samples.items()}
        # Batched augmentation: the training samples stay uint8; the loader's collate transforms whole batches.
        train_tf = None if self.batched_augmentation else self.transform(train=True)
        eval_tf = self.transform(train=False)
        self.datasets = {
            split: samples.with_transform(train_tf if split == "train" else eval_tf)
            for split, samples in self._samples.items()
        }

    def split_labels(self) -> dict[str, torch.Tensor]:
        """The labels of each split set up, after caps and carve-outs (what a run trains and tests on)."""
        return {split: samples.labels for split, samples in getattr(self, "_samples", {}).items()}

    def _split_samples(self, split: str) -> ImageDataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.setup()
        return self._samples[split]

    def _loader(
        self, dataset: Dataset, shuffle: bool, persistent: bool = True, drop_last: bool = False, collate_fn: Any = None
    ) -> DataLoader:
        sampler = EpochSeededRandomSampler(dataset) if shuffle else None
        return make_loader(
            self, dataset, batch_size=self.batch_size, seed=self.seed, train_sampler=sampler, collate_fn=collate_fn,
            num_workers=self.num_workers, persistent=persistent, drop_last=drop_last,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        if self.input_encoder is not None:
            return self.feature_loader("train", shuffle=True)
        self.setup()
        # Contrastive views: a short last batch would have fewer negatives, a different loss scale.
        drop_last = self.views > 1 and len(self._samples["train"]) >= self.batch_size
        collate = None
        if self.batched_augmentation:
            collate = BatchAugment(self.preprocessing, self.image_size, augment=self.augment, flip=self.flip)
        return self._loader(self.datasets["train"], shuffle=True, drop_last=drop_last, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        if self.input_encoder is not None:
            return self.feature_loader("val")
        self.setup()
        return self._loader(self.datasets["val"], shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test split; with `corruptions`, a list: the clean split, then one loader per `shift_sets`."""
        self.setup()
        clean = self._loader(self.datasets["test"], shuffle=False)
        if not self.corruptions:
            return clean
        shifted = [self._loader(self.corrupted(name), shuffle=False, persistent=False) for name in self.shift_sets]
        return [clean, *shifted]

    def corrupted(self, shift_set: str) -> Dataset:
        """The test split under one corruption (`<corruption>/<severity>` of `shift_sets`), computed once."""
        corruption, severity = shift_set.split("/")
        return cached_corruption(self._split_samples("test"), corruption, int(severity),
                                 resize_crop(self.preprocessing, self.image_size), normalize(self.preprocessing),
                                 self.fingerprint("test"), self.num_workers)  # fmt: skip

    def predict_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.datasets["test"], shuffle=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Un-augmented, unshuffled loader over `split` (train included), e.g. to encode features once."""
        samples = self._split_samples(split).with_transform(self.transform(train=False))
        return self._loader(samples, shuffle=False, persistent=False)

    # --- fingerprints ------------------------------------------------------------------------------

    def fingerprint(self, split: str | None = None) -> str:
        """sha256 of the samples and labels in `split` (in order) and the eval transform; None: all splits.

        Deterministic across processes and machines: sample identity is content or relative path + size.
        """
        if split is None:
            parts = "\n".join(f"{s}={self.fingerprint(s)}" for s in SPLITS)
            return hashlib.sha256(parts.encode()).hexdigest()
        if split not in self._fingerprints:
            samples = self._split_samples(split)
            digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
            params = {
                "image_size": self.image_size,
                "mean": list(self.preprocessing.mean),
                "std": list(self.preprocessing.std),
                "interpolation": self.preprocessing.interpolation,
                "class_names": self.class_names,
                "num_samples": len(samples),
            }
            digest.update(json.dumps(params, sort_keys=True).encode())
            samples.update_fingerprint(digest)
            digest.update(samples.labels.to(torch.int64).numpy().astype("<i8").tobytes())
            self._fingerprints[split] = digest.hexdigest()
        return self._fingerprints[split]

    # --- feature-cache hook ------------------------------------------------------------------------

    def feature_source(self, name: str) -> tuple[DataLoader, torch.Tensor]:
        return self.eval_dataloader(name), self._split_samples(name).labels
