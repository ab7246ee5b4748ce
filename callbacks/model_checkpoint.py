"""Lightning's ModelCheckpoint, with `last.ckpt` always the latest state."""

from __future__ import annotations

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """As Lightning's, but `save_last` writes `last.ckpt` at every validation (or train-epoch end, where the
    checkpoint is saved then), not only when a top-k checkpoint was saved at the same step.

    Lightning 2.6 skips `last.ckpt` once the monitored metric stops improving, so after a crash
    `--ckpt_path last` (and `transfer ablate`'s retry) would repeat every epoch since the best one.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: Trainer) -> None:
        behind = self._last_global_step_saved != trainer.global_step
        if self.save_last and behind and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
