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
    `extras` (such as top-5 accuracy) are reported but not part of the score.

    `update` holds up to `batches_per_update` batches (at most `max_held` output values) and feeds them to
    torchmetrics at once: each torchmetrics update costs about 0.2 ms of Python, which a small model's
    training step feels. The values equal those fed batch by batch, up to float rounding."""

    def __init__(
        self,
        names: list[str],
        num_classes: int,
        extras: list[str] | None = None,
        batches_per_update: int = 16,
        max_held: int = 2**20,
    ):
        super().__init__()
        unknown = sorted(set(names + (extras or [])) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
        self.official = list(names)
        self.metrics = nn.ModuleDict({n: METRICS[n][0](num_classes) for n in [*names, *(extras or [])]})
        self.batches_per_update, self.max_held = batches_per_update, max_held
        self._pending: list[tuple[Tensor, Tensor]] = []

    @property
    def updated(self) -> bool:
        """Whether any batch was fed since the last reset."""
        return bool(self._pending) or any(metric.update_called for _, metric in self._metrics())

    def update(self, outputs: Tensor, labels: Tensor) -> None:
        self._pending.append((outputs.detach(), labels))
        held = sum(outputs.numel() for outputs, _ in self._pending)
        if len(self._pending) >= self.batches_per_update or held >= self.max_held:
            self._feed()

    def _feed(self) -> None:
        if not self._pending:
            return
        outputs, labels = (torch.cat(parts) for parts in zip(*self._pending, strict=True))
        self._pending.clear()
        inputs = {
            "logits": lambda: outputs,
            "positive": lambda: outputs.softmax(-1)[:, 1],
            "scores": lambda: outputs.squeeze(-1).float(),
        }
        for name, metric in self._metrics():
            metric.update(inputs[METRICS[name][1]](), labels)

    def compute(self) -> dict[str, Tensor]:
        self._feed()
        values = {name: metric.compute() for name, metric in self._metrics()}
        values["score"] = torch.stack([values[n].float() for n in self.official]).mean()
        return values

    def reset(self) -> None:
        self._pending.clear()
        for _, metric in self._metrics():
            metric.reset()

    def _metrics(self) -> list[tuple[str, Metric]]:
        return [(name, cast(Metric, metric)) for name, metric in self.metrics.items()]


def shift_means(values: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """Means of the shift sets' metrics. `values`: `<corruption>/<severity>` -> metric -> value. Returns
    `<corruption>/<metric>` (over that corruption's severities) and `corruptions/<metric>` (over every set:
    the mean corruption accuracy of Hendrycks & Dietterich for `acc`). Empty when there are no shift sets."""
    groups: dict[str, list[dict[str, Tensor]]] = {"corruptions": list(values.values())}
    for name, metrics in values.items():
        groups.setdefault(name.split("/")[0], []).append(metrics)
    means: dict[str, Tensor] = {}
    for group, sets in groups.items():
        for metric in sorted(set.intersection(*(set(s) for s in sets)) if sets else ()):
            if metric != "score":
                means[f"{group}/{metric}"] = torch.stack([s[metric].float() for s in sets]).mean()
    return means
