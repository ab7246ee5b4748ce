"""What a supervised task is to a model: classification into `num_classes` classes, or regression (`num_classes`
1); its head, its loss, its prediction and its metrics. The base module has one, `MultiTask` one per task,
and distillation and contrastive learning ask theirs instead of branching on regression themselves."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.metric_defaults import default_metrics
from lightning_modules.losses import kd_loss, kd_regression_loss
from lightning_modules.metrics import TaskMetrics


@dataclass(frozen=True)
class Task:
    """A classification (`num_classes` >= 2) or regression (`num_classes` 1) task.

    Args:
        num_classes: Classes, or 1 for a regression of one score.
        metrics: The task's official metrics (`lightning_modules.metrics.METRICS`), whose mean is `score`; None:
            accuracy, or Pearson and Spearman for a regression.
        label_smoothing: Label smoothing of the cross-entropy.
    """

    num_classes: int
    metrics: tuple[str, ...] | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes must be at least 1 (1 = regression), got {self.num_classes}")

    @property
    def regression(self) -> bool:
        return self.num_classes == 1

    @property
    def official_metrics(self) -> list[str]:
        return list(self.metrics or default_metrics(self.regression))

    def new_metrics(self) -> TaskMetrics:
        """The metrics of one evaluation set: the official ones, and top-5 accuracy beside accuracy when there are
        more than 5 classes (reported, not in the score)."""
        official = self.official_metrics
        extras = ["acc_top5"] if "acc" in official and self.num_classes > 5 else []
        return TaskMetrics(official, self.num_classes, extras)

    def head(self, width: int, dropout: float = 0.0) -> nn.Module:
        """A linear head on features of `width`, behind dropout when `dropout` > 0."""
        linear = nn.Linear(width, self.num_classes)
        return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy with the task's label smoothing; MSE (in float32) for a regression."""
        if self.regression:
            return F.mse_loss(outputs.squeeze(-1).float(), labels.float())
        return F.cross_entropy(outputs, labels, label_smoothing=self.label_smoothing)

    @property
    def loss_name(self) -> str:
        """How the loss is logged beside another one (distillation's `train/ce_loss` or `train/mse_loss`)."""
        return "mse_loss" if self.regression else "ce_loss"

    def distillation_loss(self, outputs: Tensor, teacher_outputs: Tensor, temperature: float) -> Tensor:
        """Hinton's loss on the teacher's soft targets at `temperature`; for a regression, the MSE to the teacher's
        prediction (`lightning_modules.losses`)."""
        if self.regression:
            return kd_regression_loss(outputs, teacher_outputs)
        return kd_loss(outputs, teacher_outputs, temperature)

    def predict(self, outputs: Tensor) -> Tensor:
        """Class probabilities [B, C], or the predicted scores [B] of a regression."""
        return outputs.squeeze(-1) if self.regression else outputs.softmax(-1)


def linear_of(head: nn.Module) -> nn.Linear:
    """The linear layer of a head that `Task.head` made (behind its dropout, if any)."""
    linear = head[-1] if isinstance(head, nn.Sequential) else head
    assert isinstance(linear, nn.Linear)
    return linear
