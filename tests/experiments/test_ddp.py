import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import two_task_arguments

from experiments.cli import CONFIGS

pytestmark = pytest.mark.slow


def ddp_fit(tmp_path, *extra):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    args = [
        sys.executable, "-m", "experiments.cli", "fit",
        "--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
        "--data", "SyntheticDataModule", "--data.num_samples", "128",
        "-c", str(CONFIGS / "trainer" / "ddp_cpu2.yaml"),
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.max_epochs", "2",
        "--trainer.callbacks+", "rank_weights.SaveRankParameters",
        "--trainer.callbacks.directory", str(tmp_path),
        *extra,
    ]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_two_process_cpu_ddp_ranks_end_with_identical_parameters(tmp_path):
    rank0, rank1 = ddp_fit(tmp_path)
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    saved = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=True)["state_dict"]
    assert all(torch.equal(saved[name], rank0[name]) for name in rank0)  # last.ckpt holds the final weights


def test_gradual_unfreezing_under_ddp_keeps_ranks_identical(tmp_path):
    # Groups frozen when DDP wraps the model are outside its reducer: the callback must average them.
    rank0, rank1 = ddp_fit(
        tmp_path,
        "--trainer.callbacks+", "callbacks.GradualUnfreezing",
        "--trainer.callbacks.unit", "step", "--trainer.callbacks.epochs_per_stage", "2",
    )  # fmt: skip
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    start = torch.load(tmp_path / "start_rank0.pt", weights_only=True)
    assert not torch.equal(start["backbone.block1.0.weight"], rank0["backbone.block1.0.weight"]), "never unfrozen"


def test_predict_under_ddp_writes_each_row_once_as_one_process_does(tmp_path):
    common = [
        "predict",
        "--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
        "--data", "SyntheticDataModule", "--data.num_samples", "151", "--data.batch_size", "16",
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    ddp = [*common, "-c", str(CONFIGS / "trainer" / "ddp_cpu2.yaml"), "--predictions.output_dir", str(tmp_path / "ddp")]
    done = subprocess.run([sys.executable, "-m", "experiments.cli", *ddp], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    single = [*common, "--trainer.accelerator", "cpu", "--predictions.output_dir", str(tmp_path / "single")]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.cli", *single], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (tmp_path / "ddp" / "predictions.tsv").read_text().splitlines()
    ids = [int(line.split("\t")[0]) for line in rows[1:]]
    assert ids == list(range(151))  # 76 + 75 rows from the two ranks
    assert rows == (tmp_path / "single" / "predictions.tsv").read_text().splitlines()


UNUSED_HEADS = ["--trainer.strategy.init_args.find_unused_parameters", "true"]  # one task per step


@pytest.mark.parametrize(
    ("weighting", "sampling", "extra"),
    [
        ("Equal", "proportional", UNUSED_HEADS),
        ("Uncertainty", "temperature", UNUSED_HEADS),
        ("DWA", "uniform", UNUSED_HEADS),
        ("GradNorm", "all", []),
        ("PCGrad", "all", ["-c", str(CONFIGS / "trainer" / "bf16.yaml")]),
    ],
)
def test_multi_task_weightings_under_ddp_keep_ranks_identical(tmp_path, weighting, sampling, extra):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    args = [
        sys.executable, "-m", "experiments.cli", "fit",
        "--model", "MultiTask", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
        "--model.weighting", f"lightning_modules.weighting.{weighting}",
        *two_task_arguments(8, sampling),
        "-c", str(CONFIGS / "trainer" / "ddp_cpu2.yaml"),
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.max_epochs", "3",
        "--checkpoint.monitor", "val/score", "--early_stopping.init_args.monitor", "val/score",
        "--trainer.callbacks+", "rank_weights.SaveRankParameters",
        "--trainer.callbacks.directory", str(tmp_path),
        *extra,
    ]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    start = torch.load(tmp_path / "start_rank0.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and {"heads.fine.weight", "heads.coarse.weight"} <= rank0.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        assert not torch.equal(rank0[name], start[name]), f"{name} never trained"
    header = next((tmp_path / "runs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"val/fine/acc", "val/coarse/acc", "val/score"} <= set(header)
