"""Backbone weights: where local files live, reading a weights file of any of the usual layouts, loading it
key for key, and the error that says how to give weights that cannot be fetched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datamodules.cache import cache_root
from lightning_modules.backbones.base import Backbone, StateDict
from lightning_modules.frozen_base import ADAPTER_ONLY, FROZEN_BASE


def offline() -> bool:
    """True when downloads must not be attempted (tests, air-gapped machines)."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("TRANSFER_OFFLINE", "HF_HUB_OFFLINE"))


def weights_dir() -> Path:
    return Path(os.environ.get("TRANSFER_WEIGHTS_DIR") or cache_root() / "weights").expanduser()


class PretrainedWeightsUnavailable(RuntimeError):
    def __init__(self, name: str, reason: str):
        super().__init__(
            f"pretrained weights for backbone {name!r} could not be obtained: {reason}. Give a local file "
            f"with `--model.weights /path/to/weights` (or put it in $TRANSFER_WEIGHTS_DIR = {weights_dir()}), "
            "or ask for a random initialisation explicitly with `--model.pretrained false`."
        )


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a weights file: a plain state dict, `{"state_dict": ...}`, a Lightning checkpoint of
    our own runs (keys under `backbone.`) or safetensors; DataParallel's `module.` prefix removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"cannot read weights file {path}: {error}") from error
    if isinstance(state, dict) and FROZEN_BASE in state:
        raise ValueError(f"weights file {path} {ADAPTER_ONLY}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a weights file into `backbone`, every key matched, or fail naming the keys that are not."""
    state = read_state_dict(path)
    own = backbone.state_dict()
    if not set(state) & set(own):
        state = backbone.convert_state_dict(state)
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; BatchNorm fills it in.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not match the backbone: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    backbone.load_state_dict(state)
