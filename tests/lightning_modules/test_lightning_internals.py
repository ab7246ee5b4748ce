"""Contract tests of `lightning_modules.lightning_internals`, the one place that touches Lightning's private API:
each fails, naming the function, when a Lightning (or torch) release changes what it relies on."""

import typing
from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from datamodules import SyntheticDataModule
from lightning_modules import FineTuning
from lightning_modules import lightning_internals as internals


class Record(Callback):
    """What the internals say at the end of each training step."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.seen = stop_at, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.global_step, internals.loggers_write_this_step(trainer),
                          internals.epoch_batches_done(trainer)))  # fmt: skip
        if trainer.global_step == self.stop_at:
            internals.stop_as_on_sigterm(trainer)


def tiny_fit(tmp_path: Path, *callbacks: Callback, **trainer_options) -> Trainer:
    model = FineTuning(backbone="tiny_mlp", pretrained=False, num_classes=4)
    options = dict(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, log_every_n_steps=2, default_root_dir=tmp_path)  # fmt: skip
    trainer = Trainer(callbacks=list(callbacks), **(options | trainer_options))
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=64, batch_size=8))  # 6 steps per epoch
    return trainer


def test_the_loop_says_when_loggers_write_and_when_the_epoch_ends(tmp_path):
    record = Record()
    tiny_fit(tmp_path, record, enable_checkpointing=False)
    assert [step for step, logs, _ in record.seen if logs] == [2, 4, 6, 8, 10, 12]  # every log_every_n_steps
    assert [step for step, _, ends in record.seen if ends] == [6, 12]


def test_a_sigterm_stop_ends_fitting_after_that_step(tmp_path):
    record = Record(stop_at=3)
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        tiny_fit(tmp_path, record, enable_checkpointing=False)
    assert record.seen[-1][0] == 3


def test_model_checkpoint_internals_write_find_and_place_last(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor=None)
    trainer = tiny_fit(tmp_path, checkpoint, max_epochs=1)
    assert internals.checkpoint_folder(checkpoint, trainer) == str(tmp_path / "checkpoints")
    assert not internals.last_is_behind(checkpoint, trainer)  # saved at the end of the epoch
    assert isinstance(internals.saves_on_train_epoch_end(checkpoint, trainer), bool)
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    internals.save_last(checkpoint, trainer)
    assert internals.last_checkpoints(checkpoint, trainer) == {str(tmp_path / "checkpoints" / "last.ckpt")}
    assert checkpoint.last_model_path == str(tmp_path / "checkpoints" / "last.ckpt")


def test_the_fit_loop_keeps_the_loader_states_a_resume_applies(tmp_path):
    trainer = tiny_fit(tmp_path, enable_checkpointing=False, max_epochs=1)
    loop = trainer.fit_loop
    assert isinstance(loop._combined_loader_states_to_load, list) and callable(loop._load_combined_loader_states)
    assert hasattr(loop, "_combined_loader") and hasattr(loop, "_data_fetcher")
    internals.apply_saved_loader_states(trainer)  # nothing saved: nothing to do, and no error


def test_the_subprocess_launcher_keeps_its_rank_processes():
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    assert launcher.procs == []
    trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    assert internals.launched_processes(trainer) == []


def test_the_wandb_logger_run_can_be_read_and_redirected(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # the run below leaves it set; restored afterwards
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), id="first", project="contract")
    assert internals.wandb_run(logger) is None and internals.wandb_logger_run_id(logger) == "first"
    internals.set_wandb_run(logger, "second", offline=True)
    assert logger.version == "second" and internals.wandb_is_offline(logger)
    run = logger.experiment
    assert internals.wandb_run(logger) is run and run.id == "second"
    run.finish()


def test_torch_says_whether_a_module_was_compiled_and_the_precision_values_are_lightnings():
    module = torch.nn.Linear(2, 2)
    assert not internals.is_compiled(module)
    module.compile()  # lazy: nothing compiles before the first call
    assert internals.is_compiled(module)
    values = {value for part in typing.get_args(internals.PrecisionInput) for value in typing.get_args(part) or [part]}
    assert {"32-true", "bf16-mixed", "16-mixed"} <= values
