"""Evaluation metrics by name, all from torchmetrics, fed from a model's raw outputs.

A datamodule names its official metrics (`["acc"]`, CoLA `["mcc"]`, MRPC `["acc", "f1"]`, STS-B
`["pearson", "spearman"]`); `score` is their mean, as GLUE reports per task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn
from torchmetrics import Metric, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef

# name -> (builder(num_classes), what it is fed: class logits, probability of class 1, or scores)
METRICS: dict[str, tuple[Callable[[int], Metric], str]] = {
    "acc": (lambda n: MulticlassAccuracy(n, average="micro"), "logits"),
    "acc_top5": (lambda n: MulticlassAccuracy(n, top_k=5, average="micro"), "logits"),
    "f1": (lambda n: BinaryF1Score(), "positive"),
    "mcc": (lambda n: MulticlassMatthewsCorrCoef(n), "logits"),
    "pearson": (lambda n: PearsonCorrCoef(), "scores"),
    "spearman": (lambda n: SpearmanCorrCoef(), "scores"),
}


class TaskMetrics(nn.Module):
    """The metrics of one evaluation set. `compute()` adds `score`, the mean of the official ones;
    `extras` (such as top-5 accuracy) are reported but not part of the score."""

    def __init__(self, names: list[str], num_classes: int, extras: list[str] | None = None):
        super().__init__()
        unknown = sorted(set(names + (extras or [])) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
        self.official = list(names)
        self.metrics = nn.ModuleDict({n: METRICS[n][0](num_classes) for n in [*names, *(extras or [])]})

    def update(self, outputs: Tensor, labels: Tensor) -> None:
        inputs = {
            "logits": lambda: outputs,
            "positive": lambda: outputs.softmax(-1)[:, 1],
            "scores": lambda: outputs.squeeze(-1).float(),
        }
        for name, metric in self._metrics():
            metric.update(inputs[METRICS[name][1]]().detach(), labels)

    def compute(self) -> dict[str, Tensor]:
        values = {name: metric.compute() for name, metric in self._metrics()}
        values["score"] = torch.stack([values[n].float() for n in self.official]).mean()
        return values

    def reset(self) -> None:
        for _, metric in self._metrics():
            metric.reset()

    def _metrics(self) -> list[tuple[str, Metric]]:
        return [(name, cast(Metric, metric)) for name, metric in self.metrics.items()]
