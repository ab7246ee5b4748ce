"""RelabeledDataModule: another datamodule's rows under coarser labels (a derived task on the same data)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.composition import DataModuleFactory, build_member, loaders_of, with_collate
from datamodules.metric_defaults import default_metrics
from datamodules.transforms import Preprocessing


class MapLabels:
    """A collate function whose batch's `labels` are looked up in `table` (unlabelled rows, -1, stay -1)."""

    def __init__(self, collate_fn: Any, table: torch.Tensor):
        self.collate_fn, self.table = collate_fn, table

    def __call__(self, items: Any) -> Any:
        batch = self.collate_fn(items)
        labels = batch["labels"]
        batch["labels"] = torch.where(labels >= 0, self.table[labels.clamp(min=0)], labels)
        return batch


class RelabeledDataModule(L.LightningDataModule):
    """The rows of `source` with each class replaced by the group that holds it, e.g. CIFAR-10's ten classes
    as `vehicle` (airplane, automobile, ship, truck) vs `animal` (the other six): a coarse task on the same
    images, alone or as one task of a `MultiTaskDataModule`. Loaders, splits and transforms are the source's.

    Args:
        source: The datamodule to relabel (`class_path`/`init_args`); it names its classes (`class_names`).
        groups: New class name -> the source's class names it holds, in the new label order; every source
            class in exactly one group.
        metrics: Official metrics of the new labels.
        root: Given to the source where it sets none.
        preprocessing: The backbone's input contract (linked from `model.backbone`), given to the source
            where it sets none.
    """

    def __init__(
        self,
        source: DataModuleFactory,
        groups: dict[str, list[str]],
        metrics: list[str] | None = None,
        root: str | None = None,
        preprocessing: Preprocessing | None = None,
    ):
        super().__init__()
        self.source = build_member(source, "data.source", root=root, preprocessing=preprocessing)
        names = getattr(self.source, "class_names", None)
        if not names:
            raise ValueError(f"data.source ({type(self.source).__name__}) names no classes (class_names) to group")
        where = {name: i for i, name in enumerate(names)}
        grouped = [c for members in groups.values() for c in members]
        unknown = sorted(set(grouped) - set(where))
        twice = sorted({c for c in grouped if grouped.count(c) > 1})
        missing = [c for c in names if c not in set(grouped)]
        if len(groups) < 2 or unknown or twice or missing:
            raise ValueError(
                f"data.groups must put each class of the source {list(names)} in exactly one of 2+ groups: "
                f"unknown {unknown}, in several groups {twice}, in none {missing}"
            )
        table = torch.empty(len(names), dtype=torch.int64)
        for label, members in enumerate(groups.values()):
            table[[where[c] for c in members]] = label
        self.groups = {name: list(members) for name, members in groups.items()}
        self.table = table
        self._metrics = list(metrics) if metrics is not None else default_metrics(regression=False)

    def __repr__(self) -> str:  # Lightning's default would build every loader
        return f"{type(self).__name__}(groups={list(self.groups)}, source={self.source!r})"

    __str__ = __repr__

    @property
    def preprocessing(self) -> Preprocessing | None:
        """The source's input contract (what its images or tokens really are)."""
        return getattr(self.source, "preprocessing", None)

    @property
    def class_names(self) -> list[str]:
        return list(self.groups)

    def input_spec(self) -> dict[str, Any] | None:
        """The source's inputs, labelled with the groups (`TransferDataModule.input_spec`); None: unknown."""
        spec = getattr(self.source, "input_spec", lambda: None)()
        return {**spec, "labels": self.class_names} if spec is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    @property
    def metrics(self) -> list[str]:
        return list(self._metrics)

    @property
    def val_names(self) -> list[str]:
        return list(getattr(self.source, "val_names", [""]))

    @property
    def shift_sets(self) -> list[str]:
        return list(getattr(self.source, "shift_sets", []))

    def fingerprint(self, split: str | None = None) -> str:
        fingerprint = getattr(self.source, "fingerprint", None)
        base = fingerprint(split) if fingerprint is not None else type(self.source).__name__
        return hashlib.sha256(f"relabel-v1 {base} {json.dumps(self.groups)}".encode()).hexdigest()

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: str) -> None:
        self.source.trainer = self.trainer  # samplers that shard by rank ask the source's trainer
        self.source.setup(stage)

    def _relabelled(self, loaders: Any) -> Any:
        mapped = [with_collate(loader, MapLabels(loader.collate_fn, self.table)) for loader in loaders_of(loaders)]
        return mapped if isinstance(loaders, list | tuple) else mapped[0]

    def train_dataloader(self) -> DataLoader:
        return self._relabelled(self.source.train_dataloader())

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._relabelled(self.source.val_dataloader())

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._relabelled(self.source.test_dataloader())

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._relabelled(self.source.predict_dataloader())
