"""Reading one split's rows from a TSV or CSV file: where the columns are, what the labels mean.

`read_text_file` turns a `TextFile` (path, columns, quoting) into `TextRows` (texts, labels, ids), with
errors that name the split, the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

LabelParser = Callable[[str], float]


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
    first_line_of: dict[int, int] = {}  # id -> the line it was first seen on
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(
                handle, delimiter=file.delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
            )
            header = list(file.column_names) if file.column_names is not None else [c.strip() for c in next(reader, [])]
            if not header:
                raise ValueError(f"{where}: {path} is empty (not even a header line)")

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
                        f"{where}: {path} line {reader.line_num} has {len(row)} fields, expected {len(header)} "
                        f"({header})"
                    )
                try:
                    if label_at is not None:
                        labels.append(parse_label(row[label_at]))
                    if index_at is not None:
                        ids.append(int(row[index_at]))
                except ValueError as error:
                    raise ValueError(f"{where} ({path} line {reader.line_num}): {error}") from None
                if index_at is not None and first_line_of.setdefault(ids[-1], reader.line_num) != reader.line_num:
                    raise ValueError(
                        f"{where}: {path} line {reader.line_num} repeats the id {ids[-1]} of line "
                        f"{first_line_of[ids[-1]]} in column {file.index_column!r}: ids must be unique (each names "
                        "one row of the prediction file)"
                    )
                for values, at in zip(texts, text_at, strict=True):
                    values.append(row[at])
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: {path} {_undecodable(path, error)}; save it as UTF-8 and try again") from None
    if not texts[0]:
        raise ValueError(f"{where}: {path} has a header but no rows{' that parse' if skipped else ''}")
    if skipped:
        log.warning("%s: skipped %d malformed rows of %s", where, skipped, path)
    n = len(texts[0])
    dtype = torch.float32 if regression else torch.int64
    label_tensor = torch.tensor(labels, dtype=dtype) if label_at is not None else torch.full((n,), -1, dtype=dtype)
    index = torch.tensor(ids, dtype=torch.int64) if index_at is not None else None
    return TextRows(texts, label_tensor, index, str(path), labelled=label_at is not None)


def _undecodable(path: Path, error: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8: its first line that does not decode, and the bytes there."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as at:
                return f"line {number} is not UTF-8 (byte {line[at.start : at.end]!r} at column {at.start + 1})"
    return f"is not UTF-8 ({error.reason})"
