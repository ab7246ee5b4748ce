"""Lightning's EMA of the weights, whose checkpoints are evaluated with the average whoever loads them."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMA
from lightning.pytorch.trainer.states import TrainerFn


class EMAWeightAveraging(LightningEMA):
    """`lightning.pytorch.callbacks.EMAWeightAveraging`, except when a checkpoint is loaded to evaluate.

    A checkpoint's `state_dict` holds the averaged weights (the raw ones are in `current_model_state`).
    Lightning's callback, loading a checkpoint into a model that the same Trainer fitted (our
    `--test_after_fit` tests the best checkpoint that way), puts the raw weights back into the model: the
    test would measure the raw weights. Here, outside `fit`, the checkpoint's averaged weights stay; resuming
    a fit restores both models as Lightning does."""

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
