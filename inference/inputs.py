"""Inputs from disk, in a stable order: the images under a folder, the rows of a CSV / TSV of texts."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image


def image_extensions() -> set[str]:
    """File suffixes of every image format this PIL can open (`.jpg`, `.png`, `.webp`, `.tif`, ...)."""
    Image.init()
    return {suffix for suffix, name in Image.registered_extensions().items() if name in Image.OPEN}


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under `folder`, recursively, by any suffix PIL reads (any case), in path order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--inputs: {folder} is not a folder")
    suffixes = image_extensions()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def read_texts(
    path: str | Path, columns: list[str], quoting: bool | None = None
) -> tuple[list[tuple[str, ...] | None], dict[int, str]]:
    """The `columns` of every row of a .csv / .tsv file with a header line, in file order (None for a row that
    cannot be read), and why those rows cannot be (position -> a wrong number of fields). Quoting: on for .csv,
    off for .tsv (GLUE's)."""
    file = Path(path).expanduser()
    if file.suffix.lower() not in (".csv", ".tsv"):
        raise ValueError(f"--inputs: {path} is neither a folder of images nor a .csv / .tsv file of texts")
    if not file.is_file():
        raise FileNotFoundError(f"--inputs: {path} does not exist")
    quoted = quoting if quoting is not None else file.suffix.lower() == ".csv"
    rows: list[tuple[str, ...] | None] = []
    errors: dict[int, str] = {}
    with open(file, encoding="utf-8-sig", newline="") as handle:
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in columns if name not in header]
        if missing:
            raise ValueError(f"--inputs: {path} has no column {', '.join(map(repr, missing))} (columns: {header})")
        at = [header.index(name) for name in columns]
        for row in reader:
            if not row:
                continue  # a blank line is no input
            if len(row) != len(header):
                errors[len(rows)] = f"line {reader.line_num} has {len(row)} fields, expected {len(header)}"
                rows.append(None)
            else:
                rows.append(tuple(row[i] for i in at))
    return rows, errors
