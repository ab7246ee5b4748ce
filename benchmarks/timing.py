"""What every benchmark times the same way: training epochs of a quiet, validation-free fit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from callbacks import CheckpointOnSigterm, ExactResume

LOG_EVERY_N_STEPS = 5  # experiments/configs/defaults.yaml
# Nothing that is not part of a training step: no validation, checkpoints, progress bar or summary.
STEPS_ONLY: dict[str, Any] = {
    "limit_val_batches": 0,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class EpochTimer(Callback):
    """Wall seconds of each training epoch, in order."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def timed_fit(model: LightningModule, datamodule: LightningDataModule, max_epochs: int) -> tuple[list[float], float]:
    """Fit without validation, logging, checkpoints or progress bar; (seconds per epoch, total seconds)."""
    timer = EpochTimer()
    trainer = Trainer(max_epochs=max_epochs, logger=False, callbacks=[timer], **STEPS_ONLY)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return timer.seconds, time.perf_counter() - started


class StepTimer(Callback):
    """Wall seconds from the start of batch `warmup` to the end of the last batch, and the last step's loss.
    `synchronize` (torch.cuda.synchronize on a GPU) waits for the device at those two points only."""

    def __init__(self, warmup: int, synchronize: Callable[[], None] = lambda: None):
        self.warmup, self.synchronize = warmup, synchronize
        self.started, self.ended, self.loss = 0.0, 0.0, float("nan")

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.synchronize()
            self.started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self.synchronize()
            self.ended = time.perf_counter()
            self.loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)


def cli_like_trainer(logs: str, callbacks: list[Callback], **options: Any) -> Trainer:
    """A one-epoch Trainer with what the CLI always adds (the resume callbacks, a CSV logger writing every 5
    steps) and nothing that is not part of a step."""
    return Trainer(
        max_epochs=1,
        logger=CSVLogger(logs),
        log_every_n_steps=LOG_EVERY_N_STEPS,
        callbacks=[*callbacks, CheckpointOnSigterm(), ExactResume()],  # always on in the CLI
        **STEPS_ONLY,
        **options,
    )
