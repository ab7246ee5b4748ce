"""The metrics a task reports when its data names none, in one place for the datamodules and the model's `Task`."""

from __future__ import annotations


def default_metrics(regression: bool) -> list[str]:
    """Accuracy for a classification; Pearson and Spearman correlation for a regression."""
    return ["pearson", "spearman"] if regression else ["acc"]
