"""TextDataModule: sentence or sentence-pair classification / regression from TSV or CSV files.

A user's own text works without new code (file paths, column names, label names); GLUE (`glue.py`)
plugs its task specs and file quirks into the same machinery. Each split is parsed once, its labels
checked, the training rows optionally subset (`train_limit`), and tokenized once into an on-disk cache
keyed by the tokenizer, `max_length` and the rows themselves. Batches are
`{"input_ids", "attention_mask", ["token_type_ids"], "labels", "index"}`, padded per batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.cache import cache_root
from datamodules.collate import LengthGroupedSampler, PadCollator
from datamodules.samplers import EpochSeededRandomSampler
from datamodules.transforms import Preprocessing

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FINGERPRINT_VERSION = "transfer-text-v1"
CACHE_VERSION = "transfer-tokenized-v1"
# Files that define a tokenizer loaded from a local folder; their bytes are its identity.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZE_CHUNK = 4096
_LIMIT_PURPOSE = 7  # stream id of the train_limit generator: independent of other uses of the seed
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("val", "test"), "predict": ("test",)}

LabelParser = Callable[[str], float]


def _require(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"data.{key} must be {expected}, got {value!r}")


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- parsing -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextFile:
    """Where one split's rows are and how to read them.

    `quoting` None follows the suffix: on for .csv, off for .tsv (GLUE's TSVs hold stray quote
    characters that would swallow whole lines otherwise). A UTF-8 byte-order mark is always dropped.
    """

    path: Path
    text_columns: tuple[str, ...]
    label_column: str | None = "label"
    index_column: str | None = None  # ids kept for submissions (GLUE test "index"); None: row positions
    column_names: tuple[str, ...] | None = None  # a file without a header line: its columns, in order
    quoting: bool | None = None
    skip_malformed: bool = False  # drop rows with a wrong number of fields (QQP) instead of failing

    @property
    def delimiter(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix not in (".tsv", ".csv"):
            raise ValueError(f"{self.path}: expected a .tsv or .csv file")
        return "\t" if suffix == ".tsv" else ","


@dataclass
class TextRows:
    """Parsed rows of one split file: one list per text column, labels, and ids where the file has them.

    `labels` is int64 (classification) or float32 (regression), -1 on every row of an unlabelled file.
    """

    texts: list[list[str]]
    labels: torch.Tensor
    index: torch.Tensor | None  # the file's own row ids (GLUE test "index"); None: row positions
    source: str  # file path or dataset name, for messages
    labelled: bool = True
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, positions: np.ndarray) -> TextRows:
        keep = positions.tolist()
        texts = [[column[i] for i in keep] for column in self.texts]
        idx = torch.as_tensor(positions, dtype=torch.int64)
        index = self.index[idx] if self.index is not None else None
        return TextRows(texts, self.labels[idx], index, self.source, self.labelled)

    def fingerprint(self) -> str:
        """sha256 of the texts, labels and ids, in order (content only: no path, no mtime)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{len(self)} rows, {len(self.texts)} text columns".encode())
            for column in self.texts:
                digest.update("\x00".join(column).encode())
                digest.update(b"\x01")
            digest.update(str(self.labels.dtype).encode())
            digest.update(self.labels.numpy().tobytes())
            if self.index is not None:
                digest.update(self.index.numpy().astype("<i8").tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def read_text_file(
    file: TextFile, parse_label: LabelParser, where: str, require_label: bool = True, regression: bool = False
) -> TextRows:
    """Parse `file` into `TextRows`; errors name `where` (e.g. "rte train split"), the path and the line.

    With `require_label` False a file without the label column is read as unlabelled (labels -1).
    """
    path = file.path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist")
    quoting = file.quoting if file.quoting is not None else path.suffix.lower() == ".csv"
    texts: list[list[str]] = [[] for _ in file.text_columns]
    labels: list[float] = []
    ids: list[int] = []
    skipped = 0
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=file.delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        header = list(file.column_names) if file.column_names is not None else [c.strip() for c in next(reader, [])]

        def column(name: str) -> int:
            if name not in header:
                raise ValueError(f"{where}: {path} has no column {name!r} (columns: {header})")
            return header.index(name)

        text_at = [column(name) for name in file.text_columns]
        labelled = file.label_column is not None and (require_label or file.label_column in header)
        label_at = column(file.label_column) if labelled and file.label_column is not None else None
        index_at = column(file.index_column) if file.index_column is not None else None
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) != len(header):
                if file.skip_malformed:
                    skipped += 1
                    continue
                raise ValueError(
                    f"{where}: {path} line {reader.line_num} has {len(row)} fields, expected {len(header)} ({header})"
                )
            try:
                if label_at is not None:
                    labels.append(parse_label(row[label_at]))
                if index_at is not None:
                    ids.append(int(row[index_at]))
            except ValueError as error:
                raise ValueError(f"{where} ({path} line {reader.line_num}): {error}") from None
            for values, at in zip(texts, text_at, strict=True):
                values.append(row[at])
    if skipped:
        log.warning("%s: skipped %d malformed rows of %s", where, skipped, path)
    n = len(texts[0])
    dtype = torch.float32 if regression else torch.int64
    label_tensor = torch.tensor(labels, dtype=dtype) if label_at is not None else torch.full((n,), -1, dtype=dtype)
    index = torch.tensor(ids, dtype=torch.int64) if index_at is not None else None
    return TextRows(texts, label_tensor, index, str(path), labelled=label_at is not None)


# --- tokenization ------------------------------------------------------------------------------------


def load_tokenizer(name: str) -> Any:
    """`AutoTokenizer.from_pretrained(name)` (never with remote code); errors name the config keys."""
    from transformers import AutoTokenizer  # transformers costs seconds to import: only text runs pay it

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise OSError(
            f"data.preprocessing.tokenizer: cannot load tokenizer {name!r} ({error}); it comes from "
            "model.backbone: use a text backbone, or give a local tokenizer folder"
        ) from error


def tokenizer_identity(tokenizer: Any, name: str) -> dict[str, Any]:
    """What makes two tokenizers tokenize alike, without machine-specific paths.

    A local folder is identified by the bytes of its tokenizer files, a hub name by the serialized
    fast tokenizer (or its vocabulary).
    """
    digest = hashlib.sha256()
    folder = Path(name).expanduser()
    files = [f for f in TOKENIZER_FILES if (folder / f).is_file()] if folder.is_dir() else []
    for filename in files:
        digest.update(filename.encode() + b"\x00" + (folder / filename).read_bytes())
    if not files:
        if getattr(tokenizer, "is_fast", False):
            digest.update(tokenizer.backend_tokenizer.to_str().encode())
        else:
            digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return {
        "name": folder.name if files else name,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": digest.hexdigest(),
    }


def tokenize_texts(tokenizer: Any, texts: list[list[str]], max_length: int) -> dict[str, torch.Tensor]:
    """Unpadded token ids of every row, flat: `input_ids` [T] int32, `offsets` [N + 1] and, when the
    tokenizer returns them, `token_type_ids` [T] int8. Pairs are truncated longest-first."""
    ids: list[list[int]] = []
    types: list[list[int]] = []
    for start in range(0, len(texts[0]), TOKENIZE_CHUNK):
        chunk = [column[start : start + TOKENIZE_CHUNK] for column in texts]
        encoded = tokenizer(
            text=chunk[0],
            text_pair=chunk[1] if len(chunk) > 1 else None,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
        )
        ids.extend(encoded["input_ids"])
        types.extend(encoded.get("token_type_ids") or [])
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.int64)
    out = {
        "input_ids": torch.tensor([t for row in ids for t in row], dtype=torch.int32),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
    }
    if types:
        out["token_type_ids"] = torch.tensor([t for row in types for t in row], dtype=torch.int8)
    return out


def _load_cached(path: Path, num_rows: int) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        encoded = torch.load(path, map_location="cpu", weights_only=True)
        if len(encoded["offsets"]) == num_rows + 1 and int(encoded["offsets"][-1]) == len(encoded["input_ids"]):
            return encoded
    except Exception as error:  # a torn or foreign file: tokenize again and overwrite it
        log.warning("ignoring unreadable tokenization cache %s: %s", path, error)
    return None


def _save_atomic(encoded: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(encoded, handle)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never a part
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TokenizedDataset(Dataset):
    """Unpadded token ids of one split; items are `{"input_ids", ["token_type_ids"], "labels", "index"}`."""

    def __init__(self, encoded: dict[str, torch.Tensor], labels: torch.Tensor, index: torch.Tensor):
        self.input_ids = encoded["input_ids"]
        self.offsets = encoded["offsets"].tolist()
        self.token_type_ids = encoded.get("token_type_ids")
        self.labels = labels
        self.index = index

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        offsets = torch.tensor(self.offsets)
        return offsets[1:] - offsets[:-1]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start, end = self.offsets[i], self.offsets[i + 1]
        item = {"input_ids": self.input_ids[start:end].long(), "labels": self.labels[i], "index": self.index[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[start:end].long()
        return item


# --- the datamodule ----------------------------------------------------------------------------------


class TextDataModule(L.LightningDataModule):
    """Sentence or sentence-pair classification / regression from TSV or CSV files.

    "train" and "val" files must hold the label column; a "test" file may lack it (labels -1, used by
    `predict_dataloader`). `test_dataloader` evaluates on a labelled test file, else on the validation
    set(s). Several validation files give several loaders, named by `val_names`.

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

    @property
    def metrics(self) -> list[str]:
        if self._metrics is not None:
            return list(self._metrics)
        return ["pearson", "spearman"] if self.regression else ["acc"]

    @property
    def val_names(self) -> list[str]:
        """One name per validation loader ("" for a single one), for metric names such as `val/acc_mm`."""
        return [""] if len(self.val_files) <= 1 else [p.stem for p in self.val_files]

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
        params = {"version": CACHE_VERSION, "tokenizer": self.tokenizer_identity, "max_length": self.max_length}
        params["rows"] = rows.fingerprint()
        key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', self.data_name)}-{split}-{key[:24]}.pt"
        encoded = _load_cached(path, len(rows))
        if encoded is None:
            encoded = tokenize_texts(self.tokenizer, rows.texts, self.max_length)
            _save_atomic(encoded, path)
        index = rows.index if rows.index is not None else torch.arange(len(rows))
        return TokenizedDataset(encoded, rows.labels, index)

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
            if split == "test" and not self.test_is_labelled():
                continue  # test loaders are the validation sets: the test rows only serve predict
            self.split_datasets(split)

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
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._train_sampler(dataset) if train else None,
            num_workers=self.num_workers,
            collate_fn=self._collator(),
            persistent_workers=self.num_workers > 0,
        )

    def _loaders(self, split: str) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(dataset) for dataset in self.split_datasets(split)]
        return loaders[0] if len(loaders) == 1 else loaders

    def train_dataloader(self) -> DataLoader:
        (dataset,) = self.split_datasets("train")
        return self._loader(dataset, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader, or a list in `val_names` order (MNLI: matched, mismatched)."""
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

    # --- fingerprints --------------------------------------------------------------------------------

    def available_splits(self) -> list[str]:
        return [s for s in SPLITS if {"train": self.train_files, "val": self.val_files, "test": self.test_files}[s]]

    def fingerprint(self, split: str | None = None) -> str:
        """sha256 of the rows and labels of `split` (in order), the tokenizer and `max_length`; None: all
        splits. Deterministic across processes and machines (content, never paths)."""
        if split is None:
            parts = "\n".join(f"{s}={self.fingerprint(s)}" for s in self.available_splits())
            return hashlib.sha256(parts.encode()).hexdigest()
        if split not in self._fingerprints:
            rows = self.rows(split)
            params = {
                "tokenizer": self.tokenizer_identity,
                "max_length": self.max_length,
                "label_names": self.label_names,
                "regression": self.regression,
                "num_rows": [len(r) for r in rows],
            }
            digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
            digest.update(json.dumps(params, sort_keys=True).encode())
            for part in rows:
                digest.update(part.fingerprint().encode())
            self._fingerprints[split] = digest.hexdigest()
        return self._fingerprints[split]
