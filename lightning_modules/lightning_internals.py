"""Every use of Lightning's (and torch's) private API, in one place.

The rest of the project calls these functions, never a private attribute. Each is pinned by a contract test
(`tests/lightning_modules/test_lightning_internals.py`) that fails, naming the function, when a Lightning
release renames or changes what it relies on; the fix then happens here alone.
"""

from __future__ import annotations

import subprocess
from typing import Any

from lightning import Trainer
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch import nn

# Types Lightning's own signatures use: the precision values the Trainer accepts (the CLI validates
# `--trainer.precision` against them) and a checkpoint path.
PrecisionInput = _PRECISION_INPUT
CheckpointPath = _PATH

# --- the training loop ---------------------------------------------------------------------------------


def loggers_write_this_step(trainer: Trainer) -> bool:
    """Whether Lightning writes step-level logs at the current step (every `log_every_n_steps`, and when the
    run is stopping)."""
    return bool(trainer._logger_connector.should_update_logs)


def epoch_batches_done(trainer: Trainer) -> bool:
    """Whether the training epoch has reached its last batch (`limit_train_batches` counted)."""
    return bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())


def stop_as_on_sigterm(trainer: Trainer) -> None:
    """Make Lightning end fitting after the current step as if SIGTERM had arrived (it raises
    `SIGTERMException` at the end of the step)."""
    trainer._signal_connector.received_sigterm = True


def launched_processes(trainer: Trainer) -> list[subprocess.Popen]:
    """The rank processes this process's launcher started (Lightning's subprocess launcher, on rank 0)."""
    return list(getattr(trainer.strategy.launcher, "procs", []))


def apply_saved_loader_states(trainer: Trainer) -> None:
    """A resumed run's saved training-loader states, applied now if Lightning set the loaders up before the
    checkpoint's loop state was restored (a schedule asking `estimated_stepping_batches` does that), and the
    loader's iterator restarted from there."""
    loop = trainer.fit_loop
    if loop._combined_loader_states_to_load and loop._combined_loader is not None and loop._data_fetcher:
        loop._load_combined_loader_states()
        iter(loop._data_fetcher)


# --- ModelCheckpoint ---------------------------------------------------------------------------------------


def save_last(callback: ModelCheckpoint, trainer: Trainer) -> None:
    """Write the callback's `last` checkpoint now, with its naming, versioning and `last_model_path`."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def last_is_behind(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    """Whether the callback's `last` checkpoint is older than the current step and saving is allowed now."""
    behind = callback._last_global_step_saved != trainer.global_step
    return behind and not callback._should_skip_saving_checkpoint(trainer)


def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: Trainer) -> bool:
    """Whether the callback saves at the end of the training epoch rather than after validation."""
    return bool(callback._should_save_on_train_epoch_end(trainer))


def last_checkpoints(callback: ModelCheckpoint, trainer: Trainer) -> set[str]:
    """The `last` checkpoint files (versions included) in the callback's folder."""
    return set(callback._find_last_checkpoints(trainer))


def checkpoint_folder(callback: ModelCheckpoint, trainer: Trainer) -> str:
    """The folder the callback writes into (its `dirpath`, or the one Lightning derives from the logger)."""
    return str(callback._ModelCheckpoint__resolve_ckpt_dir(trainer))  # type: ignore[attr-defined]


# --- WandbLogger ----------------------------------------------------------------------------------------


def wandb_run(logger: WandbLogger) -> Any | None:
    """The W&B run the logger has started, or None before its first use."""
    return logger._experiment


def wandb_is_offline(logger: WandbLogger) -> bool:
    return bool(logger._offline)


def set_wandb_run(logger: WandbLogger, run_id: str, *, offline: bool | None = None, **init: Any) -> None:
    """Make the logger's next start (`wandb.init`) a run of id `run_id` (offline when asked; more `wandb.init`
    arguments in `init`), forgetting a run it started before."""
    logger._experiment = None
    logger._id = run_id
    logger._wandb_init.update(id=run_id, **init)
    if offline is not None:
        logger._offline = offline
        if offline:
            logger._wandb_init["mode"] = "offline"


def wandb_logger_run_id(logger: WandbLogger) -> str:
    """The id the logger's run has or will have."""
    return str(logger._wandb_init["id"])


# --- torch -----------------------------------------------------------------------------------------------


def is_compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` was called on this module."""
    return module._compiled_call_impl is not None
