"""What the study runner reads from a live run: its progress and its validation curve.

`transfer ablate` appends this callback to every run (`--trainer.callbacks+=...`); it writes two small
files into the run folder, whatever the logger: `progress.json` (epoch, max_epochs, step) when an epoch
starts, and one line of `history.jsonl` per validation with every scalar `val/*` metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from datamodules.cache import write_atomically
from experiments.ablation.runs import HISTORY, PROGRESS, read_history


class RunRecorder(Callback):
    """Writes `progress.json` and `history.jsonl` into `dirpath` (rank zero only).

    Args:
        dirpath: The run folder the study runner reads.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A fresh start drops every row; a resumed run keeps the epochs before the one it resumes at.
        kept = [row for row in read_history(self.dirpath) if row["epoch"] < trainer.current_epoch]
        self._write(HISTORY, "".join(json.dumps(row) + "\n" for row in kept))

    @rank_zero_only
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        progress = {"epoch": trainer.current_epoch, "max_epochs": trainer.max_epochs, "step": trainer.global_step}
        self._write(PROGRESS, json.dumps(progress))

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: the epoch's metrics are in callback_metrics by now.
        if trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for name, value in trainer.callback_metrics.items():
            if name.startswith("val/") and getattr(value, "numel", lambda: 1)() == 1:
                row[name] = float(value)
        with (self.dirpath / HISTORY).open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def _write(self, name: str, text: str) -> None:
        write_atomically(self.dirpath / name, lambda handle: handle.write(text.encode()))
