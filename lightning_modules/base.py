"""TransferModule: backbone + head + metrics + parameter groups + optimizer wiring.

A strategy is one short subclass: it decides what is trainable (`param_groups`) and, where it differs
from cross-entropy, how the loss is computed (`compute_loss`). Everything else lives here once.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.backbones import create_backbone

Batch = dict[str, Tensor]
ParamGroup = dict[str, Any]


class TransferModule(LightningModule):
    """Base of every strategy.

    Args:
        backbone: Registered backbone name, or any timm / torchvision model name.
        num_classes: Number of target classes (linked from the datamodule by the CLI).
        pretrained: Start from the backbone's pretrained weights (an error if they cannot be obtained).
        weights: A local weights file for the backbone; wins over `pretrained`.
        head_dropout: Dropout before the linear head.
        label_smoothing: Label smoothing of the cross-entropy.
        optimizer: Optimizer class and its arguments; its `lr` is the base learning rate.
        lr_scheduler: Optional scheduler; one that takes `total_steps` gets the run's number of steps.
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
    ):
        super().__init__()
        # Callables are not checkpoint data (and would break weights_only loading); the CLI config holds them.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be at least 2, got {num_classes}")
        self.backbone_name = backbone
        self.label_smoothing = label_smoothing
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights)
        head = nn.Linear(self.backbone.num_features, num_classes)
        self.head = nn.Sequential(nn.Dropout(head_dropout), head) if head_dropout > 0 else head
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        metrics: dict[str, Metric | MetricCollection] = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")

    # ------------------------------------------------------------------------------------ forward

    def backbone_is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, batch: Batch) -> Tensor:
        if "features" in batch:  # precomputed by the feature cache
            return batch["features"]
        inputs = batch.get("pixel_values", batch)  # text backbones take the whole tokenized dict
        if self.backbone_is_frozen():
            with torch.no_grad():
                return self.backbone(inputs)
        return self.backbone(inputs)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.features(batch))

    def compute_loss(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        logits = self(batch)
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}

    def train(self, mode: bool = True) -> TransferModule:
        """Frozen means frozen: a module whose parameters are all frozen stays in eval mode, so its
        BatchNorm statistics and dropout never change while the rest trains."""
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps modules in whatever mode they are in; re-apply the frozen rule every epoch
        # (freezing may change between epochs, e.g. gradual unfreezing).
        self.train()

    # ------------------------------------------------------------------------------------- steps

    def _step(self, batch: Batch, stage: str) -> Tensor:
        out = self.compute_loss(batch, stage)
        on_step = stage == "train"
        batch_size = len(batch["labels"])
        for name, value in out.items():
            if name != "logits":
                self.log(
                    f"{stage}/{name}",
                    value,
                    on_step=on_step,
                    on_epoch=not on_step,
                    batch_size=batch_size,
                    prog_bar=name == "loss",
                    sync_dist=not on_step,
                )
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(out["logits"].detach(), batch["labels"])
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=batch_size, prog_bar=stage == "val")
        return out["loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch).softmax(-1)

    # ------------------------------------------------------------------------------- optimization

    def param_groups(self) -> list[ParamGroup]:
        """Named parameter groups. A group may set `lr` (absolute) or `lr_scale` (times the optimizer's lr)."""
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def configure_optimizers(self) -> Any:
        groups = [g for g in self.param_groups() if g["params"]]
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self._scheduler_config(optimizer)}

    def _scheduler_config(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        factory = self.scheduler_factory
        assert factory is not None
        kwargs = {"total_steps": int(self.trainer.estimated_stepping_batches)} if _wants_total_steps(factory) else {}
        scheduler = factory(optimizer, **kwargs)
        if isinstance(scheduler, ReduceLROnPlateau):
            return {"scheduler": scheduler, "interval": "epoch", "monitor": "val/loss", "strict": False}
        return {"scheduler": scheduler, "interval": "step"}


def _wants_total_steps(factory: Any) -> bool:
    """Whether a scheduler factory takes `total_steps` and leaves it unset (OneCycleLR, WarmupLR)."""
    keywords = getattr(factory, "keywords", {})  # jsonargparse gives a partial holding every init arg
    if "total_steps" in keywords:
        return keywords["total_steps"] is None
    try:
        return "total_steps" in inspect.signature(getattr(factory, "func", factory)).parameters
    except (TypeError, ValueError):
        return False
