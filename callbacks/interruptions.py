"""What a stopped run leaves behind: SIGTERM saves the steps done; a crashed rank takes the others down."""

from __future__ import annotations

import atexit
import signal
import subprocess
from pathlib import Path
from types import FrameType

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_modules.lightning_internals import launched_processes, save_last, stop_as_on_sigterm

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143, the shell's code for "ended by SIGTERM"


class CheckpointOnSigterm(Callback):
    """On SIGTERM (a scheduler's pre-emption, `kill`, `timeout`) Lightning finishes the step in progress and
    stops; this writes a checkpoint of exactly the completed steps where `--ckpt_path last` finds it (the
    ModelCheckpoint's `last.ckpt`) and makes the process exit with code 143 instead of Lightning's 0.

    Under DDP the ranks agree on when to stop: while fitting, a SIGTERM only marks the rank that received it,
    and after each training step the ranks share their marks (one all-reduce of one number), so all stop
    after the same step, however many of them were signalled and however often. Lightning's own handler
    would broadcast from inside the signal handler and forward the signal to the other ranks, so that a rank
    signalled twice (by the scheduler and by rank 0) is one collective ahead of the others and they wait on
    each other until the process group times out. An exception in rank 0, whose process launched the other
    ranks, also ends those (SIGKILL, after the traceback is printed), so none is left waiting in a collective
    until the process group times out; a failing child rank is ended by Lightning's own process observer.
    """

    def __init__(self) -> None:
        self._marked = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:  # Lightning's handler is restored-from at teardown, this one with it
            self._marked = False
            signal.signal(signal.SIGTERM, self._mark)

    def _mark(self, signum: int, frame: FrameType | None) -> None:
        self._marked = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        if trainer.world_size > 1:
            marks = trainer.strategy.reduce(torch.tensor(float(self._marked)), reduce_op="sum")
            if float(marks) > 0:  # Lightning raises SIGTERMException on every rank at the end of this step
                stop_as_on_sigterm(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
                exception.code = EXIT_SIGTERM  # testing or predicting: no training state to keep
                return
            path = self._save_last(trainer)
            rank_zero_info(
                f"SIGTERM: saved the {trainer.global_step} completed steps to {path}; resume with the same "
                f"command and --ckpt_path {path}"
            )
            exception.code = EXIT_SIGTERM
        elif trainer.world_size > 1 and trainer.is_global_zero:
            children = launched_processes(trainer)
            if children:
                atexit.register(_end, children)  # at exit: after Python has printed the traceback

    @staticmethod
    def _save_last(trainer: Trainer) -> str:
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last and checkpoint.dirpath is not None:
            # ModelCheckpoint's own writer: its naming, versioning and `last_model_path` bookkeeping.
            save_last(checkpoint, trainer)
            return checkpoint.last_model_path
        folder = checkpoint.dirpath if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath else None
        path = str(Path(folder or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt")
        trainer.save_checkpoint(path)
        return path


def _end(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
    for child in children:
        child.wait()
