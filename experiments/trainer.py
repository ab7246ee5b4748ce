"""The CLI's Trainer: Lightning's, plus `precision: auto`, resolved from what the hardware runs fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.lightning_internals import PrecisionInput


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU executes bf16 matmuls natively (avx512_bf16 or AMX). Elsewhere bf16 is emulated and
    slower than fp32, so `auto` never picks it."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:  # not Linux: no way to tell, so not bf16
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(accelerator: Any) -> Literal["bf16-mixed", "32-true"]:
    """`bf16-mixed` where the device runs bf16 natively (a CUDA GPU from Ampere on, a CPU with avx512_bf16
    or AMX), else `32-true`."""
    name = str(accelerator)
    gpu = name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())
    if gpu:
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16-mixed" if native else "32-true"
    return "bf16-mixed" if name in ("cpu", "auto") and cpu_has_bf16() else "32-true"


class Trainer(lightning.Trainer):
    """`lightning.Trainer`, whose `precision` also takes `auto` (see `auto_precision`)."""

    def __init__(self, *args: Any, precision: Literal["auto"] | PrecisionInput | None = None, **kwargs: Any):
        if precision == "auto":
            precision = auto_precision(kwargs.get("accelerator", "auto"))
            rank_zero_info(f"precision auto: {precision}")
        super().__init__(*args, precision=precision, **kwargs)  # type: ignore[arg-type]
