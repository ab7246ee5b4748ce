"""Learning-rate schedules as `LRScheduler` classes, so the CLI can inject them (`LRSchedulerCallable`).

They scale every parameter group's own learning rate, so discriminative rates survive the schedule.
`total_steps` left unset is filled in by `TransferModule` from `trainer.estimated_stepping_batches`.
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupLR(LambdaLR):
    """Linear warm-up over `warmup` (a fraction of the run if < 1, else a number of steps), then a decay
    to `min_factor` x each group's rate at `total_steps`: `cosine` (SGDR without restarts), `linear`
    (BERT's `get_linear_schedule_with_warmup`) or `constant`."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup: float = 0.05,
        decay: Literal["cosine", "linear", "constant"] = "cosine",
        min_factor: float = 0.0,
    ):
        if total_steps is None or total_steps < 1:
            raise ValueError(f"lr_scheduler.total_steps must be a positive integer, got {total_steps}")
        warmup_steps = int(warmup * total_steps) if warmup < 1 else int(warmup)
        shapes = {
            "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
            "linear": lambda progress: 1 - progress,
            "constant": lambda progress: 1.0,
        }
        shape = shapes[decay]

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_factor + (1 - min_factor) * shape(progress)

        super().__init__(optimizer, factor)
