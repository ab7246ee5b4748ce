"""A run of a study: what it is (RunSpec) and the files of its folder that the runner, the recorder
callback inside the run and the display share. Imports nothing heavy: submitit jobs unpickle it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.cache import write_atomically

RESULT = "result.json"  # written by the runner when the run finished: its presence means "finished"
PROGRESS = "progress.json"  # written by the recorder when an epoch starts
HISTORY = "history.jsonl"  # one line per validation, written by the recorder


@dataclass(frozen=True)
class RunSpec:
    """One `transfer fit` + test; picklable for submitit."""

    study: str
    arm: str
    seed: int
    digest: str
    directory: Path
    config_args: tuple[str, ...]
    runtime_args: tuple[str, ...]
    cwd: Path

    @property
    def label(self) -> str:
        return f"{self.arm} seed {self.seed}"

    def command(self, program: Sequence[str], checkpoint: Path | None = None) -> list[str]:
        args = [*program, "fit", *self.config_args, "--seed_everything", str(self.seed), *self.runtime_args]
        return args + (["--ckpt_path", str(checkpoint)] if checkpoint is not None else [])


def write_json(path: Path, data: Any) -> None:
    """Whole or not at all: a reader never sees half a file."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_progress(directory: Path) -> dict[str, Any] | None:
    return read_json(directory / PROGRESS)


def read_history(directory: Path) -> list[dict[str, Any]]:
    """The validation rows of a run, one per epoch (a resumed epoch's last row wins), in epoch order."""
    path = directory / HISTORY
    if not path.is_file():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        rows[int(row["epoch"])] = row
    return [rows[epoch] for epoch in sorted(rows)]
