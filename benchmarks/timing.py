"""What every benchmark times the same way: training epochs of a quiet, validation-free fit."""

from __future__ import annotations

import time

from lightning import Callback, LightningDataModule, LightningModule, Trainer


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
    trainer = Trainer(
        max_epochs=max_epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return timer.seconds, time.perf_counter() - started
