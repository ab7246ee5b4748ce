"""Stop on non-finite numbers: a NaN/inf loss ends the run at that step, and no checkpoint is written from
non-finite weights (so `best.ckpt` and `last.ckpt` always hold only finite tensors)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A loss term or a tensor to be checkpointed is NaN or infinite."""


def check_finite_losses(losses: Mapping[str, Tensor], step: int, epoch: int, batch_idx: int) -> None:
    """Raise naming the step and every non-finite loss term (`loss`, `kd_loss`, `rte/loss`, ...).

    One device sync for all terms: they are stacked and tested together, the names only on failure."""
    terms = {name: value for name, value in losses.items() if name != "logits" and not name.endswith("/logits")}
    if not terms or bool(torch.isfinite(torch.stack([v.detach().float().sum() for v in terms.values()])).all()):
        return
    bad = ", ".join(
        f"{name}={v.detach().float().sum().item()}" for name, v in terms.items() if not torch.isfinite(v).all()
    )
    raise NonFiniteError(
        f"non-finite loss at global step {step} (epoch {epoch}, batch {batch_idx}): {bad}. Training stopped "
        "before this step's update; checkpoints written so far hold the last finite weights. Lower the learning "
        "rate, clip gradients (trainer.gradient_clip_val) or check the inputs of this batch."
    )


def check_finite_state(state: object, what: str, prefix: str = "") -> None:
    """Raise naming the first floating-point tensor in `state` (nested dicts and lists, e.g. a whole
    checkpoint with its optimizer states) that holds NaN or inf."""
    if isinstance(state, Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            raise NonFiniteError(f"{what}: tensor {prefix or '<root>'} holds NaN or inf; refusing to write it")
    elif isinstance(state, Mapping):
        for key, value in state.items():
            check_finite_state(value, what, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, list | tuple):
        for index, value in enumerate(state):
            check_finite_state(value, what, f"{prefix}[{index}]")
