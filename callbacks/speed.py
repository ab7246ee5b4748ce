"""Switches that change how fast a run goes, not what it computes (up to float rounding)."""

from __future__ import annotations

from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from lightning_modules.lightning_internals import is_compiled


def _channels_last(batch: Any) -> None:
    """Images (4-d `pixel_values`, also inside a multi-task `{task: batch}`) to channels_last, in place."""
    if isinstance(batch, dict):
        images = batch.get("pixel_values")
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batch["pixel_values"] = images.contiguous(memory_format=torch.channels_last)
        for value in batch.values():
            if isinstance(value, dict):
                _channels_last(value)


class Speed(Callback):
    """The CLI's `speed:` key (`--speed.channels_last true`, `-c experiments/configs/trainer/compile.yaml`).

    Args:
        channels_last: Keep convolution weights and image batches in NHWC memory order, which oneDNN and
            cuDNN convolve faster than NCHW (see `benchmarks/cpu_precision.py`).
        compile: `torch.compile` the backbone (in place: checkpoints keep their keys). The first steps pay
            the compilation (`benchmarks/compile.py` measures when it pays off).
        compile_mode: `torch.compile`'s mode (`default`, `reduce-overhead`, `max-autotune`).
    """

    def __init__(self, channels_last: bool = False, compile: bool = False, compile_mode: str | None = None):
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.channels_last:
            pl_module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        backbone = getattr(pl_module, "backbone", None)
        if self.compile and isinstance(backbone, torch.nn.Module) and not is_compiled(backbone):
            backbone.compile(mode=self.compile_mode)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.channels_last:
            _channels_last(batch)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.on_train_batch_start(trainer, pl_module, batch, batch_idx)
