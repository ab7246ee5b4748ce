"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018, "Universal Language Model Fine-tuning").

Training starts with only the head trainable; at each stage the next layer group from the top of
`backbone.layer_groups()` becomes trainable. Combined with `FineTuning(lr_decay=...)` this is ULMFiT's
gradual unfreezing with discriminative learning rates.

Why it survives what breaks other implementations:
- Every layer group is in the optimizer from step 0 (`FineTuning` puts them there; frozen parameters
  have no gradient, hence no optimizer state and no update), so any scheduler (OneCycleLR, LambdaLR,
  ReduceLROnPlateau, WarmupLR) sees one fixed set of parameter groups for the whole run.
- The stage is derived from the epoch or step counter and saved in the checkpoint, so a resumed run
  re-applies exactly the trainable set it stopped with.
- Under DDP, parameters frozen when the model was wrapped are not in DDP's reducer; their gradients are
  averaged across ranks here once they are unfrozen, so ranks cannot drift apart.
"""

from __future__ import annotations

import bisect
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from datamodules.samplers import world_and_rank


class GradualUnfreezing(Callback):
    """Unfreeze the backbone's layer groups one at a time, from the top.

    Args:
        epochs_per_stage: Unfreeze the next group every this many epochs (or steps, see `unit`).
        milestones: Explicit epochs (or steps) at which the next group is unfrozen; overrides
            `epochs_per_stage`. The k-th milestone unfreezes the k-th group from the top.
        unit: Whether stages count `epoch`s or optimizer `step`s.
        max_unfrozen: Stop after this many groups; None unfreezes all of them.
        warmup_steps: Ramp a newly unfrozen group's learning rate linearly from 0 over this many steps.
    """

    def __init__(
        self,
        epochs_per_stage: int = 1,
        milestones: list[int] | None = None,
        unit: Literal["epoch", "step"] = "epoch",
        max_unfrozen: int | None = None,
        warmup_steps: int = 0,
    ):
        if epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage must be >= 1, got {epochs_per_stage}")
        if milestones is not None and sorted(milestones) != list(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if max_unfrozen is not None and max_unfrozen < 0:
            raise ValueError(f"max_unfrozen must be >= 0, got {max_unfrozen}")
        self.epochs_per_stage = epochs_per_stage
        self.milestones = milestones
        self.unit = unit
        self.max_unfrozen = max_unfrozen
        self.warmup_steps = warmup_steps
        self.stage = 0
        self.unfrozen_at: dict[int, int] = {}  # group index -> global step at which it was unfrozen
        self._outside_ddp: list[nn.Parameter] = []
        self._saved_lrs: list[float] | None = None

    # --------------------------------------------------------------------------------- schedule

    def stage_at(self, counter: int, num_groups: int) -> int:
        """Number of groups (from the top) trainable at this epoch or step."""
        if self.milestones is not None:
            stage = bisect.bisect_right(self.milestones, counter)
        else:
            stage = counter // self.epochs_per_stage
        limit = num_groups if self.max_unfrozen is None else min(self.max_unfrozen, num_groups)
        return min(stage, limit)

    def _groups(self, module: LightningModule) -> list[list[nn.Parameter]]:
        backbone = getattr(module, "backbone", None)
        if backbone is None or not hasattr(backbone, "layer_groups"):
            raise ValueError("GradualUnfreezing needs a strategy with a backbone that has layer_groups()")
        return backbone.layer_groups()

    def _apply(self, trainer: Trainer, module: LightningModule, stage: int) -> None:
        groups = self._groups(module)
        first_trainable = len(groups) - stage
        for index, group in enumerate(groups):
            trainable = index >= first_trainable
            if trainable and index not in self.unfrozen_at:
                self.unfrozen_at[index] = trainer.global_step
            for param in group:
                param.requires_grad_(trainable)
        self.stage = stage
        module.train(module.training)  # frozen groups (their BatchNorm included) back to eval mode

    def _advance(self, trainer: Trainer, module: LightningModule, counter: int) -> None:
        stage = self.stage_at(counter, len(self._groups(module)))
        if stage != self.stage:
            self._apply(trainer, module, stage)

    # ------------------------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # before the optimizer is built and DDP wraps the model: head only
            self._apply(trainer, pl_module, 0)
            self.unfrozen_at.clear()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Parameters frozen now were left out of DDP's gradient reducer when it wrapped the model.
        self._outside_ddp = [p for group in self._groups(pl_module) for p in group if not p.requires_grad]
        restored = self.stage
        self.stage = 0
        self._apply(trainer, pl_module, restored)  # a resumed run comes back with its trainable set

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.unit == "epoch":
            self._advance(trainer, pl_module, trainer.current_epoch)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.unit == "step":
            self._advance(trainer, pl_module, trainer.global_step)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self._all_reduce_outside_ddp(trainer)
        if self.warmup_steps > 0:
            self._warm_up(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._saved_lrs is not None:  # undo the warm-up factor before any scheduler looks at the rates
            for group, lr in zip(trainer.optimizers[0].param_groups, self._saved_lrs, strict=True):
                group["lr"] = lr
            self._saved_lrs = None

    # ---------------------------------------------------------------------------------- helpers

    def _all_reduce_outside_ddp(self, trainer: Trainer) -> None:
        if world_and_rank()[0] == 1:
            return
        grads = [p.grad for p in self._outside_ddp if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= trainer.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def _warm_up(self, trainer: Trainer, module: LightningModule, optimizer: Any) -> None:
        groups = self._groups(module)
        index_of = {id(p): i for i, group in enumerate(groups) for p in group}
        self._saved_lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            layer = next((index_of[id(p)] for p in group["params"] if id(p) in index_of), None)
            if layer is None or layer not in self.unfrozen_at:
                continue
            progress = (trainer.global_step - self.unfrozen_at[layer] + 1) / self.warmup_steps
            group["lr"] *= min(1.0, progress)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "unfrozen_at": dict(self.unfrozen_at)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage = int(state_dict["stage"])
        self.unfrozen_at = {int(k): int(v) for k, v in state_dict["unfrozen_at"].items()}
