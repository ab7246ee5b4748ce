import numpy as np
import pytest
import torch

from datamodules.splits import cap_per_class, describe_splits, stratified_split, validate_labels

LABELS = np.repeat(np.arange(4), [50, 30, 7, 1])  # unbalanced on purpose


def per_class(labels: np.ndarray, positions: np.ndarray) -> list[int]:
    return np.bincount(labels[positions], minlength=4).tolist()


def test_cap_keeps_at_most_cap_per_class_and_all_of_small_classes():
    kept = cap_per_class(LABELS, 10, seed=0)
    assert per_class(LABELS, kept) == [10, 10, 7, 1]
    assert np.all(np.diff(kept) > 0)  # sorted, no duplicates


def test_cap_none_keeps_everything():
    assert cap_per_class(LABELS, None, seed=3).tolist() == list(range(len(LABELS)))


def test_cap_is_deterministic_seed_dependent_and_nested():
    a, b = cap_per_class(LABELS, 10, seed=0), cap_per_class(LABELS, 10, seed=0)
    assert a.tolist() == b.tolist()
    assert a.tolist() != cap_per_class(LABELS, 10, seed=1).tolist()
    assert set(cap_per_class(LABELS, 5, seed=0)) <= set(a)


def test_cap_of_one_class_does_not_depend_on_the_others():
    kept = cap_per_class(LABELS, 10, seed=0)
    alone = cap_per_class(LABELS[:50], 10, seed=0)
    assert kept[LABELS[kept] == 0].tolist() == alone.tolist()


def test_stratified_split_partitions_and_stratifies():
    kept, held = stratified_split(LABELS, 0.2, seed=0)
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(LABELS)))
    # round(0.2 n) per class, at least one each side when a class has two or more, a singleton stays kept
    assert per_class(LABELS, held) == [10, 6, 1, 0]
    assert per_class(LABELS, kept) == [40, 24, 6, 1]


def test_stratified_split_is_deterministic_and_seed_dependent():
    assert stratified_split(LABELS, 0.2, 5)[1].tolist() == stratified_split(LABELS, 0.2, 5)[1].tolist()
    assert stratified_split(LABELS, 0.2, 5)[1].tolist() != stratified_split(LABELS, 0.2, 6)[1].tolist()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(LABELS, fraction, 0)


def test_validate_labels_accepts_valid_labels():
    validate_labels(torch.tensor([0, 3, 9]), 10, "train")


def test_validate_labels_names_split_and_value():
    with pytest.raises(ValueError, match=r"val split: label 12 \(sample 1\) is outside \[0, 10\)"):
        validate_labels(torch.tensor([0, 12, 3]), 10, "val")
    with pytest.raises(ValueError, match="test split: label -1"):
        validate_labels(torch.tensor([-1]), 10, "test")


def test_validate_labels_requires_int64():
    with pytest.raises(ValueError, match="train split: labels must be int64, got torch.int32"):
        validate_labels(torch.tensor([0, 1], dtype=torch.int32), 10, "train")


def test_describe_splits_gives_counts_per_class_or_alone():
    labels = {
        "train": torch.tensor([0, 0, 1, 1, 1, 2]),
        "val": torch.tensor([0, 1, 2]),
        "test": torch.full((4,), -1),  # unlabelled (GLUE test)
        "scores": torch.tensor([0.5, 4.2]),  # regression
    }
    assert describe_splits(labels) == "train 6 (1 to 3 per class), val 3 (1 per class), test 4, scores 2"
