"""Lightning's ModelCheckpoint, with `last.ckpt` always the latest state."""

from __future__ import annotations

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from lightning_modules.lightning_internals import last_is_behind, save_last, saves_on_train_epoch_end


class ModelCheckpoint(LightningModelCheckpoint):
    """As Lightning's, but `save_last` writes `last.ckpt` at every validation (or train-epoch end, where the
    checkpoint is saved then), not only when a top-k checkpoint was saved at the same step.

    Lightning 2.6 skips `last.ckpt` once the monitored metric stops improving, so after a crash
    `--ckpt_path last` (and `transfer ablate`'s retry) would repeat every epoch since the best one.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if saves_on_train_epoch_end(self, trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        if self.save_last and last_is_behind(self, trainer):
            save_last(self, trainer)
