"""Deterministic, stratified subsetting: per-class caps, held-out splits and label checks.

Each class draws from its own generator seeded by (seed, purpose, class), so a class's choice does not
depend on the other classes, and a smaller cap is a subset of a larger one under the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

_CAP, _SPLIT = 0, 1


def _class_rng(seed: int, purpose: int, label: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, label])


def _by_class(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    labels = np.asarray(labels)
    return [(int(c), np.flatnonzero(labels == c)) for c in np.unique(labels)]


def cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Sorted positions keeping at most `cap` samples of each class (all of them when `cap` is None)."""
    labels = np.asarray(labels)
    if cap is None:
        return np.arange(len(labels))
    kept = [_class_rng(seed, _CAP, c).permutation(idx)[:cap] if len(idx) > cap else idx for c, idx in _by_class(labels)]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held_out), holding out `fraction` of every class (rounded).

    A class with at least two samples puts at least one on each side; a single sample stays on the kept
    side. Both arrays are sorted, so the order of samples within a split follows the input.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    kept, held = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for c, idx in _by_class(labels):
        n_held = min(max(int(fraction * len(idx) + 0.5), 1), len(idx) - 1) if len(idx) > 1 else 0
        order = _class_rng(seed, _SPLIT, c).permutation(idx)
        held.append(order[:n_held])
        kept.append(order[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def validate_labels(labels: torch.Tensor, num_classes: int, split: str) -> None:
    """Raise ValueError naming the split and value unless labels are int64 in [0, num_classes)."""
    if labels.dtype != torch.int64:
        raise ValueError(f"{split} split: labels must be int64, got {labels.dtype}")
    bad = (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{split} split: label {int(labels[i])} (sample {i}) is outside [0, {num_classes}) "
            f"for a dataset with {num_classes} classes"
        )


def describe_splits(labels: dict[str, torch.Tensor]) -> str:
    """`train 1,800 (180 per class), val 200 (20 per class), test 2,000 (150 to 250 per class)`: the sizes of the
    splits a run uses, after caps and carve-outs. Unlabelled (-1) or regression labels give the count alone."""
    parts = []
    for split, values in labels.items():
        text = f"{split} {len(values):,}"
        if not values.is_floating_point() and len(values) and int(values.min()) >= 0:
            counts = torch.bincount(values)
            low, high = int(counts.min()), int(counts.max())
            text += f" ({low} per class)" if low == high else f" ({low} to {high} per class)"
        parts.append(text)
    return ", ".join(parts)
