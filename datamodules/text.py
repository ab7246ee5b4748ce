"""TextDataModule: sentence or sentence-pair classification / regression from TSV or CSV files.

A user's own text works without new code (file paths, column names, label names); GLUE (`glue.py`)
plugs its task specs and file quirks into the same machinery. Each split is parsed once, its labels
checked, the training rows optionally subset (`train_limit`), and tokenized once into an on-disk cache
keyed by the tokenizer, `max_length` and the rows themselves. Batches are
`{"input_ids", "attention_mask", ["token_type_ids"], "labels", "index"}`, padded per batch.

Parsing lives in `text_files.py`, tokenization and its cache in `tokenization.py`; this module holds the
datamodule, which ties them together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from datamodules.cache import cache_root
from datamodules.collate import LengthGroupedSampler, PadCollator
from datamodules.feature_inputs import FeatureInputs
from datamodules.metric_defaults import default_metrics
from datamodules.samplers import EpochSeededRandomSampler, make_loader
from datamodules.text_files import TextFile, TextRows, read_text_file
from datamodules.tokenization import TokenizedDataset, cache_key, load_tokenizer, tokenize_cached, tokenizer_identity
from datamodules.transforms import Preprocessing

__all__ = ["SPLITS", "TextDataModule", "TextFile", "TextRows"]  # glue.py and user code import these from here

SPLITS = ("train", "val", "test")
FINGERPRINT_VERSION = "transfer-text-v1"
_LIMIT_PURPOSE = 7  # stream id of the train_limit generator: independent of other uses of the seed
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("val", "test"), "predict": ("test",)}


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"data.{key} must be {expected}, got {value!r}")


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- the datamodule ----------------------------------------------------------------------------------


class TextDataModule(FeatureInputs, L.LightningDataModule):
    """Sentence or sentence-pair classification / regression from TSV or CSV files.

    "train" and "val" files must hold the label column; a "test" file may lack it (labels -1, used by
    `predict_dataloader`). `test_dataloader` evaluates on a labelled test file, else on the validation
    set(s). Several validation files give several loaders, named by `val_names`. With an input encoder
    set (`set_input_encoder`), train and val serve precomputed features instead, one feature set per
    validation file (`feature_sets`).

    Args:
        train_file: Training rows (.tsv or .csv, by suffix).
        val_file: Validation rows; a list gives one loader per file.
        test_file: Rows to predict (or to test on, when they have labels); a list gives one loader each.
        text_columns: One column (single sentences) or two (sentence pairs).
        label_column: The label column.
        label_names: String labels, mapped to 0, 1, ... in this order; None: integer labels
            (or numbers for regression). Integers are accepted alongside the names.
        num_classes: Number of classes of integer labels; None: the number of `label_names`.
        regression: Float labels (one output, MSE-style); `metrics` become pearson/spearman.
        index_column: A column of integer row ids that test batches carry as "index" (for prediction
            files); None, and on the other splits: the row position in its split.
        column_names: The columns of files without a header line (every file of this datamodule).
        quoting: Honour CSV quote characters; None: on for .csv, off for .tsv.
        metrics: Metric names the model reports; None: ["acc"], or ["pearson", "spearman"] for regression.
        preprocessing: The backbone's input contract; its `tokenizer` (a name or local folder, linked from
            `model.backbone`) tokenizes the text.
        max_length: Tokens per sequence after truncation (pairs are truncated longest-first).
        separate_pairs: Tokenize the two sentences of a pair apart, for a bi-encoder (`model.pair_head`):
            batches then hold the second sentences as `pair_input_ids` / `pair_attention_mask`.
        pad_to_max_length: Pad every batch to `max_length` instead of to its longest sequence.
        batch_size: Rows per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        group_by_length: Training batches of similar lengths (shuffle, sort chunks of 50 batches by
            length, shuffle the batches); less padding, same randomness per epoch.
        seed: Data seed for `train_limit` (independent of the training seed, which orders the batches).
        train_limit: Train on a random subset of this many rows (the same rows for the same seed).
        cache_dir: Tokenization cache; None: `cache_root() / "tokenized"`.
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | list[str] | None = None,
        test_file: str | list[str] | None = None,
        text_columns: Sequence[str] = ("sentence",),
        label_column: str = "label",
        label_names: list[str] | None = None,
        num_classes: int | None = None,
        regression: bool = False,
        index_column: str | None = None,
        column_names: list[str] | None = None,
        quoting: bool | None = None,
        metrics: list[str] | None = None,
        preprocessing: Preprocessing | None = None,
        max_length: int = 128,
        separate_pairs: bool = False,
        pad_to_max_length: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        group_by_length: bool = False,
        seed: int = 0,
        train_limit: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        _require(len(text_columns) in (1, 2), "text_columns", list(text_columns), "one or two column names")
        _require(max_length >= 8, "max_length", max_length, ">= 8")
        _require(not separate_pairs or len(text_columns) == 2, "separate_pairs", separate_pairs,
                 f"false for single sentences (text_columns {list(text_columns)})")  # fmt: skip
        _require(batch_size >= 1, "batch_size", batch_size, ">= 1")
        _require(num_workers >= 0, "num_workers", num_workers, ">= 0")
        _require(seed >= 0, "seed", seed, ">= 0")
        _require(train_limit is None or train_limit >= 1, "train_limit", train_limit, ">= 1 or null")
        if regression:
            _require(not label_names, "label_names", label_names, "null for regression")
        elif label_names is not None:
            _require(len(set(label_names)) == len(label_names) >= 2, "label_names", label_names, "2+ distinct names")
            _require(num_classes in (None, len(label_names)), "num_classes", num_classes, "len(label_names)")
        elif num_classes is None:
            raise ValueError("data.num_classes (or data.label_names) is required for integer labels")
        else:
            _require(num_classes >= 2, "num_classes", num_classes, ">= 2")
        if preprocessing is None or not preprocessing.tokenizer:
            raise ValueError(
                "data.preprocessing.tokenizer is not set: text data needs the tokenizer of a text backbone; "
                "choose one with model.backbone (it is linked into data.preprocessing), or set "
                "data.preprocessing.tokenizer to a tokenizer name or folder"
            )
        self.train_files = [self._existing(p, "train_file") for p in _as_list(train_file)]
        self.val_files = [self._existing(p, "val_file") for p in _as_list(val_file)]
        self.test_files = [self._existing(p, "test_file") for p in _as_list(test_file)]
        self.text_columns = tuple(text_columns)
        self.label_column = label_column
        self.regression = regression
        self._label_names = list(label_names) if label_names is not None else None
        self._num_classes = 1 if regression else (len(label_names) if label_names is not None else num_classes)
        self.label_range: tuple[float, float] | None = None  # regression labels outside it stop setup
        self.index_column = index_column
        self.column_names = tuple(column_names) if column_names is not None else None
        self.quoting = quoting
        self._metrics = list(metrics) if metrics is not None else None
        self.preprocessing = preprocessing
        self.tokenizer_name = str(preprocessing.tokenizer)
        self.max_length = max_length
        self.separate_pairs = separate_pairs
        self.pad_to_max_length = pad_to_max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.train_limit = train_limit
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "tokenized"
        self.datasets: dict[str, list[TokenizedDataset]] = {}
        self._rows: dict[str, list[TextRows]] = {}
        self._tokenizer: Any = None
        self._tokenizer_identity: dict[str, Any] | None = None
        self._fingerprints: dict[str, str] = {}

    @staticmethod
    def _existing(path: str, key: str) -> Path:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise FileNotFoundError(f"data.{key}: {path} does not exist")
        return resolved

    # --- what the model reads right after __init__ (no data read) -------------------------------------

    @property
    def data_name(self) -> str:
        """Names the data in messages and cache files."""
        first = (self.train_files or self.val_files or self.test_files or [Path("text")])[0]
        return first.parent.name or "text"

    @property
    def num_classes(self) -> int:
        """Number of classes; 1 for regression."""
        assert self._num_classes is not None
        return self._num_classes

    @property
    def is_regression(self) -> bool:
        return self.regression

    @property
    def label_names(self) -> list[str] | None:
        """Label strings in class order (as in the files, fit for submission files); None for regression."""
        if self.regression:
            return None
        return list(self._label_names) if self._label_names is not None else [str(i) for i in range(self.num_classes)]

    def input_spec(self) -> dict[str, Any]:
        """How a row is made ready for the model (tokenizer, `max_length`, one input or two for a bi-encoder),
        the text columns and the label names (regression: the label range): plain data, recorded in checkpoints
        for `transfer export` and `inference`."""
        names = getattr(self, "class_names", None) or self.label_names
        return {
            "type": "text",
            "tokenizer": self.tokenizer_name,
            "max_length": self.max_length,
            "text_columns": list(self.text_columns),
            "separate_pairs": self.separate_pairs,
            "labels": list(names) if names is not None else None,
            "label_range": list(self.label_range) if self.label_range is not None else None,
        }

    @property
    def metrics(self) -> list[str]:
        if self._metrics is not None:
            return list(self._metrics)
        return default_metrics(self.regression)

    @property
    def val_names(self) -> list[str]:
        """One name per validation loader ("" for a single one), for metric names such as `val/acc_mm`."""
        return [""] if len(self.val_files) <= 1 else [p.stem for p in self.val_files]

    @property
    def prediction_names(self) -> list[str]:
        """File names (without .tsv) of `transfer predict`'s output, one per test file: `<stem>_predictions`."""
        return [f"{p.stem}_predictions" for p in self.test_files]

    def __repr__(self) -> str:
        # Lightning's default __str__ calls every *_dataloader(), which would read and tokenize data.
        shown: dict[str, object] = {
            "name": self.data_name,
            "tokenizer": self.tokenizer_name,
            "max_length": self.max_length,
        }
        shown |= {"batch_size": self.batch_size, "train_limit": self.train_limit, "seed": self.seed}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

    # --- rows ----------------------------------------------------------------------------------------

    def split_files(self, split: str) -> list[TextFile]:
        """The files of `split` and how to read them."""
        paths = {"train": self.train_files, "val": self.val_files, "test": self.test_files}[split]
        if not paths:
            raise ValueError(f"data.{split}_file is not set: the {split} split has no rows")
        # Ids only on the test split: elsewhere "index" is the row position (what per-row caches key on).
        index_column = self.index_column if split == "test" else None
        return [
            TextFile(p, self.text_columns, self.label_column, index_column, self.column_names, self.quoting)
            for p in paths
        ]

    def load_rows(self, split: str) -> list[TextRows]:
        """Parse every source of `split` (one per validation set), labels checked while parsing."""
        where = f"{self.data_name} {split} split"
        return [
            read_text_file(f, self.parse_label, where, require_label=split != "test", regression=self.regression)
            for f in self.split_files(split)
        ]

    def parse_label(self, value: str | float) -> float:
        """One raw label -> class id (or float score), checked against the label range."""
        if self.regression:
            try:
                score = float(value)
            except ValueError:
                raise ValueError(f"label {value!r} is not a number") from None
            low, high = self.label_range if self.label_range is not None else (-np.inf, np.inf)
            if not (np.isfinite(score) and low <= score <= high):
                raise ValueError(f"label {value!r} is outside [{low}, {high}]")
            return score
        text = value.strip() if isinstance(value, str) else value
        names = self._label_names or []
        if text in names:
            return names.index(str(text))
        try:
            label = int(text)
        except ValueError:
            expected = f"one of {names} or " if names else ""
            raise ValueError(f"label {value!r} is not {expected}an integer class id") from None
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} is outside [0, {self.num_classes}) for {self.num_classes} classes")
        return label

    def rows(self, split: str) -> list[TextRows]:
        """Parsed rows of `split` (one entry per validation set); training rows limited by `train_limit`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self._rows:
            loaded = self.load_rows(split)
            if split == "train" and self.train_limit is not None:
                loaded = [self._limited(rows) for rows in loaded]
            self._rows[split] = loaded
        return self._rows[split]

    def _limited(self, rows: TextRows) -> TextRows:
        assert self.train_limit is not None
        if self.train_limit >= len(rows):
            return rows
        # A prefix of one permutation: a smaller limit keeps a subset of a larger one's rows.
        order = np.random.default_rng([self.seed, _LIMIT_PURPOSE]).permutation(len(rows))
        return rows.subset(np.sort(order[: self.train_limit]))

    # --- tokenization --------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            assert self.tokenizer_name is not None
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def tokenizer_identity(self) -> dict[str, Any]:
        if self._tokenizer_identity is None:
            assert self.tokenizer_name is not None
            self._tokenizer_identity = tokenizer_identity(self.tokenizer, self.tokenizer_name)
        return self._tokenizer_identity

    def _tokenized(self, rows: TextRows, split: str) -> TokenizedDataset:
        texts = [[column] for column in rows.texts] if self.separate_pairs else [rows.texts]
        encoded = []
        for part, columns in enumerate(texts):  # a pair encoded apart: each sentence on its own
            rows_key = rows.fingerprint() + (f"|part{part}" if len(texts) > 1 else "")
            key = cache_key(self.tokenizer_identity, self.max_length, rows_key)
            path = self.cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', self.data_name)}-{split}-{key[:24]}.pt"
            encoded.append(tokenize_cached(self.tokenizer, columns, self.max_length, path))
        index = rows.index if rows.index is not None else torch.arange(len(rows))
        return TokenizedDataset(encoded[0], rows.labels, index, pair=encoded[1] if len(encoded) > 1 else None)

    def split_datasets(self, split: str) -> list[TokenizedDataset]:
        """Tokenized datasets of `split` (one per validation set), from the cache when it has them."""
        if split not in self.datasets:
            self.datasets[split] = [self._tokenized(rows, split) for rows in self.rows(split)]
        return self.datasets[split]

    def prepare_data(self) -> None:
        # One process fills the tokenization cache before every rank's setup reads it.
        for split in ("train", "val"):
            self.split_datasets(split)

    def setup(self, stage: str | None = None) -> None:
        splits = STAGE_SPLITS.get(stage or "", SPLITS)
        for split in splits:
            if split == "test" and stage != "predict" and not self.test_is_labelled():
                continue  # test loaders are the validation sets: the test rows only serve predict
            self.split_datasets(split)

    def split_labels(self) -> dict[str, torch.Tensor]:
        """The labels of each split read so far (validation files together), after `train_limit`."""
        return {split: torch.cat([dataset.labels for dataset in datasets]) for split, datasets in self.datasets.items()}

    def test_is_labelled(self) -> bool:
        """Whether `test_dataloader` evaluates on the test files (else on the validation sets)."""
        return bool(self.test_files) and all(rows.labelled for rows in self.rows("test"))

    # --- loaders -------------------------------------------------------------------------------------

    def _collator(self) -> PadCollator:
        tokenizer = self.tokenizer
        return PadCollator(
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,  # masked anyway
            pad_token_type_id=getattr(tokenizer, "pad_token_type_id", 0),
            pad_to=self.max_length if self.pad_to_max_length else None,
            padding_side=tokenizer.padding_side,
        )

    def _train_sampler(self, dataset: TokenizedDataset) -> Sampler:
        if not self.group_by_length:
            return EpochSeededRandomSampler(dataset)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return LengthGroupedSampler(dataset.lengths, self.batch_size, num_replicas=replicas, rank=rank)

    def _loader(self, dataset: TokenizedDataset, train: bool = False) -> DataLoader:
        return make_loader(
            self, dataset, batch_size=self.batch_size, seed=self.seed, num_workers=self.num_workers,
            collate_fn=self._collator(), train_sampler=self._train_sampler(dataset) if train else None,
        )  # fmt: skip

    def _loaders(self, split: str) -> DataLoader | list[DataLoader]:
        return _one_or_list([self._loader(dataset) for dataset in self.split_datasets(split)])

    def train_dataloader(self) -> DataLoader:
        if self.input_encoder is not None:
            return self.feature_loader("train", shuffle=True)
        (dataset,) = self.split_datasets("train")
        return self._loader(dataset, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader, or a list in `val_names` order (MNLI: matched, mismatched)."""
        if self.input_encoder is not None:
            return _one_or_list([self.feature_loader(name) for name in self.feature_sets("val")])
        return self._loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The labelled test files, else the validation loaders (GLUE hides its test labels)."""
        return self._loaders("test" if self.test_is_labelled() else "val")

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test rows; their "index" is the file's id column (GLUE `index`) for submission files."""
        return self._loaders("test")

    def eval_dataloader(self, split: str) -> DataLoader | list[DataLoader]:
        """Unshuffled loader(s) over `split` (train included), e.g. to encode features once."""
        return self._loaders(split)

    # --- feature-cache hook --------------------------------------------------------------------------

    def feature_sets(self, split: str) -> list[str]:
        """Names of the feature sets of `split`: the split itself, or `val_0`, `val_1`, ... in `val_names`
        order where it has several files (MNLI: matched, mismatched). `fingerprint` accepts every name."""
        count = len(self.rows(split))
        return [split] if count == 1 else [f"{split}_{i}" for i in range(count)]

    def feature_source(self, name: str) -> tuple[DataLoader, torch.Tensor]:
        split, part = self._parse_split(name)
        datasets = self.split_datasets(split)
        if part is None and len(datasets) > 1:
            raise ValueError(f"{split} has {len(datasets)} sets; name one of them: {self.feature_sets(split)}")
        dataset = datasets[part or 0]
        return self._loader(dataset), dataset.labels

    def _parse_split(self, name: str) -> tuple[str, int | None]:
        """`val` -> ("val", None): the whole split; `val_1` -> ("val", 1): its second file alone."""
        split, _, part = name.partition("_")
        count = len(self.rows(split)) if split in SPLITS else 0
        if count == 0 or (part and not (part.isdigit() and int(part) < count)):
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}, or val_<i> for one of several files")
        return split, int(part) if part else None

    # --- fingerprints --------------------------------------------------------------------------------

    def available_splits(self) -> list[str]:
        return [s for s in SPLITS if {"train": self.train_files, "val": self.val_files, "test": self.test_files}[s]]

    def fingerprint(self, split: str | None = None) -> str:
        """sha256 of the rows and labels of `split` (in order), the tokenizer and `max_length`; None: all
        splits; `val_1`: the second validation file alone (`feature_sets`). Deterministic across processes
        and machines (content, never paths)."""
        if split is None:
            parts = "\n".join(f"{s}={self.fingerprint(s)}" for s in self.available_splits())
            return hashlib.sha256(parts.encode()).hexdigest()
        if split not in self._fingerprints:
            name, file_index = self._parse_split(split)
            rows = self.rows(name) if file_index is None else self.rows(name)[file_index : file_index + 1]
            params = {
                "tokenizer": self.tokenizer_identity,
                "max_length": self.max_length,
                "label_names": self.label_names,
                "regression": self.regression,
                "num_rows": [len(r) for r in rows],
            }
            if self.separate_pairs:  # other inputs, other features
                params["separate_pairs"] = True
            digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
            digest.update(json.dumps(params, sort_keys=True).encode())
            for part in rows:
                digest.update(part.fingerprint().encode())
            self._fingerprints[split] = digest.hexdigest()
        return self._fingerprints[split]


def _one_or_list(loaders: list[DataLoader]) -> DataLoader | list[DataLoader]:
    return loaders[0] if len(loaders) == 1 else loaders
