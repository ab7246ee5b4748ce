"""Fit a linear head on frozen features: the LP step of LP-FT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fit_linear_probe(head: nn.Linear, features: Tensor, labels: Tensor, l2: float = 1e-3, max_iter: int = 100) -> float:
    """Multinomial logistic regression (cross-entropy + `l2` * ||W||^2) by full-batch L-BFGS, written
    into `head` in place. Returns the training accuracy of the fitted head."""
    weight = head.weight.detach().clone().zero_().requires_grad_(True)
    bias = head.bias.detach().clone().zero_().requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    features, labels = features.to(weight.device, weight.dtype), labels.to(weight.device)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
        return (head(features).argmax(-1) == labels).float().mean().item()
