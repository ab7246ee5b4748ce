"""Contrastive pretraining: SimCLR or SupCon on two augmented views of each image, or SimCSE's two dropout
passes of each sentence, with a kNN classifier and an online linear probe as evaluation while it trains.

The views come from the data (`data.views: 2` gives `pixel_values` [B, 2, C, H, W]); text needs nothing
from the data: the batch goes through the encoder twice, in one forward of the doubled batch. A later run
starts from the pretrained backbone with `--model.backbone_ckpt <checkpoint>` (projector dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.backbones.transformers_encoders import MODEL_INPUTS
from lightning_modules.base import Batch, ParamGroup, TransferModule
from lightning_modules.feature_cache import extract_features
from lightning_modules.knn import knn_scores
from lightning_modules.losses import nt_xent, supcon

# method -> loss(z1, z2, labels, temperature)
LOSSES: dict[str, Callable[[Tensor, Tensor, Tensor, float], Tensor]] = {
    "simclr": lambda z1, z2, labels, t: nt_xent(z1, z2, t),
    "supcon": lambda z1, z2, labels, t: supcon(torch.cat([z1, z2]), torch.cat([labels, labels]), t),
}


def projection_mlp(in_features: int, dims: Sequence[int]) -> nn.Sequential:
    """Linear-BatchNorm-ReLU hidden layers and a linear output (SimCLR v2 / solo-learn); [] is the identity."""
    layers: list[nn.Module] = []
    for i, width in enumerate(dims):
        layers.append(nn.Linear(in_features, width))
        if i < len(dims) - 1:
            layers += [nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers)


def two_views(batch: Batch) -> Any:
    """The backbone's input for both views at once: 2B rows, every first view, then every second view."""
    pixels = batch.get("pixel_values")
    if pixels is None:  # text: the same sentences twice; dropout makes the two passes differ (SimCSE)
        return {k: torch.cat([batch[k], batch[k]]) for k in MODEL_INPUTS if k in batch}
    if pixels.ndim != 5 or pixels.shape[1] != 2:
        raise ValueError(
            f"Contrastive trains on two views per image, pixel_values [B, 2, C, H, W], got {list(pixels.shape)}: "
            "set data.views=2"
        )
    return pixels.transpose(0, 1).flatten(0, 1)


class Accuracies(nn.Module):
    """Named top-1 accuracies of one evaluation set. `update` without a name (the base's training step)
    feeds `linear_acc`; `compute` reports only those that were fed."""

    def __init__(self, names: list[str], num_classes: int):
        super().__init__()
        self.metrics = nn.ModuleDict({n: MulticlassAccuracy(num_classes, average="micro") for n in names})

    def update(self, outputs: Tensor, labels: Tensor, name: str = "linear_acc") -> None:
        if name in self.metrics:
            self._metrics()[name].update(outputs.detach(), labels)

    def compute(self) -> dict[str, Tensor]:
        return {name: metric.compute() for name, metric in self._metrics().items() if metric.update_called}

    def reset(self) -> None:
        for metric in self._metrics().values():
            metric.reset()

    def _metrics(self) -> dict[str, Metric]:
        return {name: cast(Metric, metric) for name, metric in self.metrics.items()}


class Contrastive(TransferModule):
    """Backbone + projection MLP trained with a contrastive loss; the base's head is the online probe.

    Logs `train/contrastive_loss` (+ `train/linear_loss`), and each validation epoch `val/knn_acc` (a
    weighted kNN vote over the backbone features of the un-augmented training set) and `val/linear_acc`.
    Biases and normalisation weights (1-D parameters) and the probe go without weight decay, which also
    keeps them out of LARS's adaptation (`timm.optim.Lars` adapts only groups with weight decay), as SimCLR
    does.

    Args:
        method: `simclr` (NT-Xent, the other view is the only positive) or `supcon` (every view of the
            same class is a positive; needs labels).
        temperature: Temperature of the loss.
        projector_dims: Widths of the projection MLP on top of the backbone, the last one its output.
        linear_probe: Train the head on detached backbone features (`val/linear_acc`); it never changes
            the backbone.
        knn_k: Neighbours of the kNN evaluation (`val/knn_acc`); None switches it off.
        knn_temperature: Temperature of the kNN vote weights.
    """

    def __init__(
        self,
        method: Literal["simclr", "supcon"] = "simclr",
        temperature: float = 0.2,
        projector_dims: Sequence[int] = (512, 128),
        linear_probe: bool = True,
        knn_k: int | None = 200,
        knn_temperature: float = 0.1,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if self.pair_head is not None:
            raise ValueError("model.pair_head: Contrastive takes sentence pairs as one input (a cross-encoder)")
        if method not in LOSSES:
            raise ValueError(f"model.method must be one of {sorted(LOSSES)}, got {method!r}")
        if temperature <= 0 or knn_temperature <= 0:
            raise ValueError(
                f"model.temperature and model.knn_temperature must be > 0, got {temperature}, {knn_temperature}"
            )
        if knn_k is not None and knn_k < 1:
            raise ValueError(f"model.knn_k must be >= 1 or null, got {knn_k}")
        if self.regression:
            raise ValueError(
                "Contrastive evaluates with class labels (kNN, linear probe); the data is a regression task"
            )
        self.method = method
        self.temperature = temperature
        self.projector = projection_mlp(self.backbone.num_features, projector_dims)
        self.linear_probe = linear_probe
        self.knn_k = knn_k
        self.knn_temperature = knn_temperature
        if not linear_probe:
            self.head.requires_grad_(False)  # out of the optimizer, and no unused parameters under DDP
        num_classes = self.hparams["num_classes"]
        self.accuracy_names = [n for n, on in (("knn_acc", knn_k is not None), ("linear_acc", linear_probe)) if on]
        self.train_metrics = nn.ModuleList([Accuracies(["linear_acc"] if linear_probe else [], num_classes)])
        self.val_metrics = nn.ModuleList([self.evaluation_metrics() for _ in self.val_names])
        self.test_metrics = nn.ModuleList([self.evaluation_metrics() for _ in self.val_names])
        self.bank: tuple[Tensor, Tensor] | None = None  # kNN features and labels, rebuilt every evaluation

    def init_task_modules(self) -> None:
        """The online probe as the head; its accuracies (kNN, linear) are built in `__init__`, once the evaluations
        are known. The probe standardises its input (BatchNorm without affine parameters, as MAE's linear probe),
        so one learning rate suits features of any scale (a from-scratch CIFAR ResNet's have norms near 100)."""
        head = self.build_head()
        layers = list(head) if isinstance(head, nn.Sequential) else [head]
        self.head = nn.Sequential(nn.BatchNorm1d(self.backbone.num_features, affine=False), *layers)

    def inference_heads(self) -> dict[str, nn.Module]:
        """The online probe, when trained (`linear_probe`); else none: the backbone alone is the result."""
        return {"default": self.head} if self.linear_probe else {}

    def compute_loss(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        """The training loss on a two-view batch (evaluation runs `evaluate` instead)."""
        labels = batch["labels"]
        features = self.backbone(two_views(batch))
        z1, z2 = self.projector(features).chunk(2)
        parts = {"contrastive_loss": LOSSES[self.method](z1, z2, labels, self.temperature)}
        logits = self.head(features.detach())
        if self.linear_probe:
            parts["linear_loss"] = self.task.loss(logits, torch.cat([labels, labels]))
        return {"loss": torch.stack(list(parts.values())).sum(), "logits": logits[: len(labels)], **parts}

    # ----------------------------------------------------------------------------------- evaluation

    def feature_bank(self) -> tuple[Tensor, Tensor] | None:
        """Backbone features and labels of the un-augmented training set (the datamodule's feature source)."""
        if self.knn_k is None or self.trainer.sanity_checking:
            return None
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "feature_source"):
            raise ValueError(
                "model.knn_k needs a datamodule with feature_source (TransferDataModule, TextDataModule), got "
                f"{type(datamodule).__name__}; set model.knn_k=null to evaluate without kNN"
            )
        loader, labels = datamodule.feature_source("train")  # under DDP every rank encodes the whole bank
        return extract_features(self.backbone, loader).to(self.device), labels.to(self.device)

    def evaluate(self, batch: Batch, stage: str, dataloader_idx: int) -> None:
        features = self.features(batch)
        metrics = getattr(self, f"{stage}_metrics")[dataloader_idx]
        labels = batch["labels"]
        metrics.update(self.head(features), labels, "linear_acc")
        if self.bank is not None:
            assert self.knn_k is not None
            num_classes = self.hparams["num_classes"]
            scores = knn_scores(features, *self.bank, num_classes, self.knn_k, self.knn_temperature)
            metrics.update(scores, labels, "knn_acc")

    def evaluation_metrics(self) -> nn.Module:
        return Accuracies(self.accuracy_names, self.hparams["num_classes"])

    def log_accuracies(self, stage: str) -> None:
        shifted = {}
        for index, metrics in enumerate(getattr(self, f"{stage}_metrics")):
            values = metrics.compute()
            metrics.reset()
            for name, value in values.items():
                self.log(self.metric_name(stage, index, name), value, prog_bar=stage == "val")
            shift = self.shift_set(stage, index)
            if shift is not None:
                shifted[shift] = values
        self.log_shift_means(stage, shifted)
        self.bank = None

    def on_validation_epoch_start(self) -> None:
        self.bank = self.feature_bank()

    def on_test_epoch_start(self) -> None:
        self.bank = self.feature_bank()

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate(batch, "test", dataloader_idx)

    def on_train_epoch_end(self) -> None:
        self.log_accuracies("train")

    def on_validation_epoch_end(self) -> None:
        self.log_accuracies("val")

    def on_test_epoch_end(self) -> None:
        self.log_accuracies("test")

    # --------------------------------------------------------------------------------- optimization

    def param_groups(self) -> list[ParamGroup]:
        def trained(module: nn.Module, matrices: bool) -> list[nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad and (p.ndim > 1) == matrices]

        groups: list[ParamGroup] = [
            {"name": "backbone", "params": trained(self.backbone, True)},
            {"name": "projector", "params": trained(self.projector, True)},
            {"name": "no_decay", "params": trained(self.backbone, False) + trained(self.projector, False)},
        ]
        groups[-1]["weight_decay"] = 0.0
        if self.linear_probe:
            groups.append({"name": "head", "params": list(self.head.parameters()), "weight_decay": 0.0})
        return groups
