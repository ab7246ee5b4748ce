"""The model of a checkpoint written by `transfer fit`, rebuilt from its hyper_parameters and weights, as
trained: for commands that use a trained model outside a Trainer (`merge`, `export`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import seed_everything

from lightning_modules.base import TransferModule
from lightning_modules.checkpoints import check_hyperparameters, read_checkpoint
from lightning_modules.frozen_base import FROZEN_BASE

STRATEGY_HELP = (
    "the class path of the checkpoint's strategy when it is your own (e.g. my_strategies.L2SPFineTuning): its "
    "module is imported; without it only this project's strategies load"
)


def load_trained_model(
    path: str | Path, seed: int | None = None, own_strategy: str | None = None
) -> tuple[TransferModule, dict[str, Any]]:
    """The model (eval mode) and the checkpoint. A checkpoint holding every weight builds nothing pretrained; an
    adapter run's rebuilds its frozen base from where it came from (checked against its fingerprint); a randomly
    initialised one from `seed`, the run's `seed_everything` (default: the one the checkpoint records). A strategy of
    the user's own is loaded only when they name its class path (`own_strategy`, the commands' `--strategy`): it is
    imported because they chose it, never because a checkpoint names it. Errors name the file."""
    file, checkpoint = read_checkpoint(str(path), "checkpoint")
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {file} holds no model (it has no state_dict and hyper_parameters)")
    class_path = hparams.get("_class_path")
    if own_strategy is not None:
        if own_strategy != class_path:
            raise ValueError(f"--strategy {own_strategy}: checkpoint {file} was trained with {class_path}")
        import_class_module(own_strategy)
    try:
        check_hyperparameters(hparams, file, TransferModule, frozenset({own_strategy} if own_strategy else ()))
    except ValueError as error:
        if own_strategy is None and isinstance(class_path, str) and not class_path.startswith("lightning_modules."):
            raise ValueError(f"{error}. If {class_path} is a strategy of your own: --strategy {class_path}") from None
        raise
    if "_class_path" not in hparams:
        raise ValueError(
            f"checkpoint {file} was not written by `transfer fit` (no _class_path in its hyper_parameters): its "
            "strategy is unknown"
        )
    if FROZEN_BASE not in checkpoint:  # every weight is in the checkpoint: start from nothing pretrained
        hparams = {**hparams, "pretrained": False, "weights": None, "backbone_ckpt": None}
    elif seed is None:  # a random base is rebuilt from the run's own seed (`RunMetadata` records it)
        seed = (checkpoint.get("run") or {}).get("seed")
    if seed is not None:
        seed_everything(seed, verbose=False)
    module, _, name = hparams["_class_path"].rpartition(".")
    strategy: type[TransferModule] = getattr(sys.modules[module], name)  # imported: check_hyperparameters saw it
    model = strategy.for_inference(hparams)
    model.on_load_checkpoint(checkpoint)
    missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {file} does not fit its own model ({hparams['_class_path']}): missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    return model.eval(), checkpoint


def import_class_module(class_path: str) -> None:
    """Import the module of `class_path`, which the user named (errors say which and why)."""
    module = class_path.rpartition(".")[0]
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"--strategy {class_path}: cannot import {module} ({error})") from None
