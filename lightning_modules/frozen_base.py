"""Checkpoints of adapter runs: the trained weights plus a fingerprint of the frozen base, not the base itself.

A run with an adapter trains well under 1 % of the backbone; the rest is the pretrained backbone, rebuilt
from the registry (or the weights file) whenever the model is built. Its checkpoints therefore drop the
frozen pretrained parameters and record what they were: the backbone's name, where its weights came from, and
a SHA-256 over the dropped tensors. Loading (resume, `transfer test`, `transfer merge`) checks that the rebuilt
base hashes the same, naming both when it does not, and fills the dropped entries back in from it, so the
state dict loads strictly as for any other run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

FROZEN_BASE = "frozen_base"
ADAPTER_ONLY = (
    "is an adapter run's checkpoint: it holds the trained weights, not the frozen base. Merge the adapter into "
    "a plain checkpoint first: transfer merge <checkpoint>"
)


def frozen_base_keys(module: nn.Module, base: set[int]) -> list[str]:
    """State-dict keys of the frozen parameters that belong to the pretrained base (ids in `base`, taken before
    the adapter was added): the adapter's own parameters are always saved, even where frozen."""
    return sorted(
        name
        for name, param in module.named_parameters(remove_duplicate=False)
        if id(param) in base and not param.requires_grad
    )


def tensors_sha256(state: dict[str, Tensor], keys: list[str]) -> str:
    digest = hashlib.sha256()
    for key in keys:
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def strip_frozen_base(checkpoint: dict[str, Any], keys: list[str], source: dict[str, Any]) -> None:
    """Drop `keys` from the checkpoint's state dict and record their fingerprint (`source`: backbone name and
    weights) under `checkpoint["frozen_base"]`."""
    state = checkpoint["state_dict"]
    checkpoint[FROZEN_BASE] = {**source, "tensors": len(keys), "sha256": tensors_sha256(state, keys)}
    for key in keys:
        del state[key]


def restore_frozen_base(checkpoint: dict[str, Any], module: nn.Module, source: dict[str, Any]) -> None:
    """Fill the entries a checkpoint dropped from `module`'s own (freshly built) state, after checking that they
    hash as recorded; a clear error naming both bases otherwise."""
    recorded = checkpoint.get(FROZEN_BASE)
    if recorded is None:
        return
    own = module.state_dict()
    missing = sorted(set(own) - set(checkpoint["state_dict"]))
    mine = {**source, "tensors": len(missing), "sha256": tensors_sha256(own, missing)}
    if mine["sha256"] != recorded.get("sha256"):
        raise ValueError(
            f"the checkpoint's adapter was trained on another frozen base: {_describe(recorded)}; this model's base "
            f"is {_describe(mine)}. Build the model with the checkpoint's backbone and weights (model.backbone, "
            "model.weights, model.backbone_ckpt)"
        )
    checkpoint["state_dict"] = {**{key: own[key] for key in missing}, **checkpoint["state_dict"]}


def _describe(base: dict[str, Any]) -> str:
    return f"{base.get('backbone')} ({base.get('weights')}, {base.get('tensors')} tensors, sha256 {base.get('sha256')})"
