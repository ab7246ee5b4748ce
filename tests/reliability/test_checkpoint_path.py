"""Item 3: `ckpt_path` semantics: a missing file fails naming it, `last` with nothing saved says it starts
fresh, and config values that differ from the checkpoint's are listed key by key on resume."""

import json
import time
from pathlib import Path

import pytest
import torch

from experiments.cli import CONFIGS, cli_main

TINY = [
    "fit",
    "--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
    "--data", "SyntheticDataModule", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", "runs",
]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_missing_explicit_path_exits_2_naming_it_before_anything_is_created(in_tmp, capsys):
    with pytest.raises(SystemExit) as raised:
        cli_main([*TINY, "--ckpt_path", "no/such/last.ckpt"])
    assert raised.value.code == 2
    assert "ckpt_path: no/such/last.ckpt does not exist" in capsys.readouterr().err
    assert list(in_tmp.iterdir()) == [], "a run folder was created for a run that cannot start"


def test_last_with_nothing_saved_says_it_starts_fresh_and_trains(in_tmp, capsys):
    cli = cli_main([*TINY, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert "ckpt_path=last: no last checkpoint in " in err and "training starts fresh" in err
    assert str(in_tmp / "runs" / "csv" / "version_0" / "checkpoints") in err  # the folder it looked in
    assert cli.trainer.current_epoch == 1 and cli.trainer.global_step > 0


def test_resume_lists_each_differing_model_setting_and_uses_the_checkpoints(in_tmp, capsys):
    first = cli_main([*TINY, "--model.label_smoothing", "0.1"])
    last = in_tmp / "runs" / "csv" / "version_0" / "checkpoints" / "last.ckpt"
    steps = first.trainer.global_step
    capsys.readouterr()
    resumed = cli_main([*TINY, "--trainer.max_epochs", "2", "--model.lr_decay", "0.5", "--ckpt_path", str(last)])
    err = capsys.readouterr().err
    assert f"ckpt_path {last}: 2 model settings differ from the checkpoint's; the checkpoint's are used:" in err
    assert "  model.init_args.label_smoothing: config 0.0, checkpoint 0.1" in err
    assert "  model.init_args.lr_decay: config 0.5, checkpoint 1.0" in err
    assert "backbone:" not in err and "num_classes" not in err  # equal or linked from the data: not listed
    assert resumed.model.task.label_smoothing == 0.1 and resumed.model.hparams.lr_decay == 1.0
    assert resumed.trainer.global_step == 2 * steps  # it resumed, not restarted


def test_last_found_in_the_checkpoint_folder_is_resumed_listing_differences(in_tmp, capsys):
    folder = ["--checkpoint.dirpath", str(in_tmp / "ckpts")]
    first = cli_main([*TINY, *folder])
    steps = first.trainer.global_step
    capsys.readouterr()
    resumed = cli_main([*TINY, *folder, "--trainer.max_epochs", "2", "--model.lr_decay", "0.5", "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert f"ckpt_path=last ({in_tmp / 'ckpts' / 'last.ckpt'}): 1 model settings differ" in err
    assert "  model.init_args.lr_decay: config 0.5, checkpoint 1.0" in err and "config's are used" in err
    assert resumed.trainer.global_step == 2 * steps


def test_resume_from_a_file_that_is_not_a_checkpoint_exits_2_naming_it(in_tmp, capsys):
    (in_tmp / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(SystemExit) as raised:
        cli_main([*TINY, "--ckpt_path", "notes.ckpt"])
    assert raised.value.code == 2 and "ckpt_path: notes.ckpt is not a PyTorch checkpoint (it starts with b'not ')" in (
        capsys.readouterr().err
    )
    torch.save({"state_dict": {}}, in_tmp / "empty.ckpt")  # no hyper_parameters: nothing to compare or overlay
    with pytest.raises(SystemExit) as raised:
        cli_main([*TINY, "--ckpt_path", "empty.ckpt"])
    assert raised.value.code == 2
    assert "ckpt_path: empty.ckpt is not a Lightning checkpoint of a run (no pytorch-lightning_version)" in (
        capsys.readouterr().err
    )


def test_a_resumed_run_reports_the_fit_seconds_of_all_its_parts(in_tmp):
    folder = ["--checkpoint.dirpath", str(in_tmp / "ckpts")]
    cli_main([*TINY, *folder])
    last = in_tmp / "ckpts" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["callbacks"]["Timer"]["time_elapsed"]["train"] > 0  # the first part's
    checkpoint["callbacks"]["Timer"]["time_elapsed"]["train"] = 1000.0  # as if the first part had taken 1,000 s
    torch.save(checkpoint, last)
    started = time.perf_counter()
    resumed = cli_main(
        [*TINY, *folder, "--trainer.max_epochs", "2", "--ckpt_path", str(last), "--test_after_fit", "true"]
    )
    second_part = time.perf_counter() - started
    results = json.loads((Path(resumed.trainer.log_dir) / "results.json").read_text())
    assert 1000.0 < results["fit_seconds"] < 1000.0 + second_part


def test_a_timer_of_the_config_measures_fit_seconds_without_a_second_one(in_tmp):
    """`fit_seconds` comes from Lightning's `Timer`; one the config sets (say, to bound the run) is used, not
    doubled (Lightning refuses two stateful callbacks of one type in a checkpoint)."""
    timer = ["--trainer.callbacks+=Timer", "--trainer.callbacks.duration", "00:01:00:00"]
    timer += ["--trainer.callbacks.interval", "step"]  # its default, an enum, does not go into a YAML config
    run = cli_main([*TINY, *timer, "--checkpoint.dirpath", str(in_tmp / "ckpts"), "--test_after_fit", "true"])
    timers = [cb for cb in run.trainer.callbacks if type(cb).__name__ == "Timer"]
    assert len(timers) == 1 and timers[0].time_remaining() < 3600
    results = json.loads((Path(run.trainer.log_dir) / "results.json").read_text())
    saved = torch.load(in_tmp / "ckpts" / "last.ckpt", weights_only=True)["callbacks"]["Timer"]["time_elapsed"]
    assert 0 < saved["train"] <= results["fit_seconds"]  # the checkpoint holds the training time up to it
