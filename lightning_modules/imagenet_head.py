"""A head made of the backbone's pretrained ImageNet classifier: its rows for the target's classes.

Restricting the 1000-way logits `W f + b` to the target's ImageNet indices `idx` is the same as a linear
head with weight `W[idx]` and bias `b[idx]`: zero-shot evaluation uses that head as it is, and
`head_init: imagenet_rows` starts training from it. The indices come from the datamodule
(`imagenet_indices`, given by `datamodules.ImageNetSubsetDataModule`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IMAGENET_CLASSES = 1000


def check_imagenet_rows(module: Any, key: str) -> None:
    """Fail at construction, naming `key`, unless the backbone has pretrained ImageNet-1k classifier rows."""
    head = module.backbone.pretrained_head()
    if head is None:
        raise ValueError(f"{key} needs a backbone with a pretrained classifier; {module.backbone_name} has none")
    if head.out_features != IMAGENET_CLASSES:
        raise ValueError(
            f"{key} needs an ImageNet-1k classifier; {module.backbone_name}'s has {head.out_features} outputs"
        )
    if not (module.hparams["pretrained"] or module.hparams["weights"] is not None):
        raise ValueError(
            f"{key} copies pretrained classifier rows, but model.pretrained is false and no model.weights given"
        )


def imagenet_indices_of(datamodule: Any, key: str) -> list[int]:
    indices = getattr(datamodule, "imagenet_indices", None)
    if indices is None:
        raise ValueError(
            f"{key} needs the ImageNet-1k index of every class, which {type(datamodule).__name__} does not give: "
            "use datamodules.ImageNetSubsetDataModule (class folders named by wnid)"
        )
    return list(indices)


@torch.no_grad()
def copy_imagenet_rows(module: Any, key: str) -> None:
    """Write the pretrained classifier's rows (and biases) for the datamodule's classes into `module.head`."""
    indices = imagenet_indices_of(module.trainer.datamodule, key)
    source: nn.Linear = module.backbone.pretrained_head()
    linear: nn.Linear = module.linear_head
    if len(indices) != linear.out_features:
        raise ValueError(
            f"{key}: the datamodule gives {len(indices)} ImageNet indices for a {linear.out_features}-way head"
        )
    rows = torch.as_tensor(indices, dtype=torch.int64, device=source.weight.device)
    linear.weight.copy_(source.weight[rows])
    if linear.bias is not None and source.bias is not None:
        linear.bias.copy_(source.bias[rows])
    elif linear.bias is not None:
        linear.bias.zero_()
