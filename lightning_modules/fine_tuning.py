"""Fine-tuning: full, or the top k layer groups, with a separate head rate and layer-wise decay."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_modules.base import ParamGroup, TransferModule


class FineTuning(TransferModule):
    """Train the backbone with the head. With `pretrained: false` this is training from scratch.

    Args:
        trainable_groups: Train only the top k of `backbone.layer_groups()`; the rest stay frozen (eval
            mode, no gradient). Every group is in the optimizer from step 0, frozen ones without state, so
            schedulers and `callbacks.GradualUnfreezing` see one fixed set of groups. None trains all.
        head_lr: Learning rate of the head; None uses the optimizer's lr.
        lr_decay: Layer-wise decay: the group at depth d from the top gets lr * lr_decay**d (ULMFiT,
            Howard & Ruder 2018, use 1/2.6); 1.0 gives every group the optimizer's lr.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        num_classes: int = 10,
        pretrained: bool = True,
        weights: str | None = None,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        trainable_groups: int | None = None,
        head_lr: float | None = None,
        lr_decay: float = 1.0,
    ):
        super().__init__(
            backbone, num_classes, pretrained, weights, head_dropout, label_smoothing, optimizer, lr_scheduler
        )
        groups = self.backbone.layer_groups()
        if trainable_groups is not None:
            if not 0 <= trainable_groups <= len(groups):
                raise ValueError(
                    f"model.trainable_groups must be in [0, {len(groups)}] for {backbone}, got {trainable_groups}"
                )
            for group in groups[: len(groups) - trainable_groups]:
                for param in group:
                    param.requires_grad_(False)
        self.head_lr = head_lr
        self.lr_decay = lr_decay
        if not 0 < lr_decay <= 1:
            raise ValueError(f"model.lr_decay must be in (0, 1], got {lr_decay}")

    def param_groups(self) -> list[ParamGroup]:
        groups = self.backbone.layer_groups()
        grouped = {id(p) for group in groups for p in group}
        stray = [n for n, p in self.backbone.named_parameters() if p.requires_grad and id(p) not in grouped]
        if stray:
            raise ValueError(f"trainable backbone parameters outside every layer group: {stray[:5]}")
        result = [
            {
                "name": f"backbone.{i}",
                "params": list(group),  # frozen ones too: no gradient, so no state and no update
                "lr_scale": self.lr_decay ** (len(groups) - 1 - i),
            }
            for i, group in enumerate(groups)
        ]
        head: ParamGroup = {"name": "head", "params": list(self.head.parameters())}
        if self.head_lr is not None:
            head["lr"] = self.head_lr
        return [*result, head]
