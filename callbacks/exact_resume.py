"""What a resumed run needs beyond weights and optimizer to continue exactly: random state, data position."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

from lightning_modules.lightning_internals import apply_saved_loader_states


def collect_rng_state() -> dict[str, Any]:
    """torch (CPU, and CUDA when in use), numpy and `random` states as tensors and numbers (weights_only)."""
    _, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(position)},
        "numpy_gauss": [int(has_gauss), float(gauss)],
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64)},
        "python_gauss": gauss_next,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device: each rank restores its own
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], has_gauss, gauss))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class ExactResume(Callback):
    """Makes `--ckpt_path` continue the interrupted run exactly, step for step.

    - Random state: the global generators (torch, numpy, `random`) go into every checkpoint and are restored
      just before the first resumed training step, so dropout and any other draw continue the stream the
      uninterrupted run would have used. (Data order and augmentation have their own seeds:
      `datamodules.samplers`.)
    - Data position: Lightning hands the training loaders their saved state (`ResumableDataLoader`) when it
      sets up the training data, but a learning-rate schedule that asks for `estimated_stepping_batches`
      (`WarmupLR`, OneCycleLR) makes it set them up before the checkpoint's loop state is restored; the
      states are then never applied and the interrupted epoch would start again from its first batch. This
      applies them at train start and restarts the loader's iterator from there.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        apply_saved_loader_states(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
