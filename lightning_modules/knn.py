"""Weighted k-nearest-neighbour classification on features: the online evaluation of self-supervised runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_scores(
    features: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200, temperature: float = 0.1
) -> Tensor:
    """Class scores [B, C] of a temperature-weighted kNN vote (Wu et al. 2018, "Unsupervised Feature
    Learning via Non-Parametric Instance Discrimination"; as solo-learn's `WeightedKNNClassifier` and
    lightly's `knn_predict`): the k most cosine-similar bank rows each vote for their label with weight
    exp(similarity / temperature) (scaled per query so that the nearest weighs 1).

    Args:
        features: [B, D] query features.
        bank: [N, D] features of the labelled rows (e.g. the un-augmented training set).
        bank_labels: [N] their classes.
        num_classes: C.
        k: Neighbours per query (at most N).
        temperature: Softness of the vote; smaller trusts the nearest neighbours more.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    with torch.autocast(features.device.type, enabled=False):
        queries, keys = F.normalize(features.float(), dim=1), F.normalize(bank.float(), dim=1)
        similarity, neighbours = (queries @ keys.T).topk(min(k, len(keys)), dim=1)
        votes = F.one_hot(bank_labels[neighbours], num_classes).float()  # [B, k, C]
        # Weights relative to each query's nearest neighbour: the same vote, and no overflow at small T.
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        return (votes * weights.unsqueeze(-1)).sum(1)
