"""2-process CPU DDP (gloo): the same training as one process on the global batch; a failing rank ends all."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_probes import read_steps

from experiments.cli import CONFIGS

pytestmark = pytest.mark.slow

HELPERS = [Path(__file__).parents[1] / "helpers", Path(__file__).parents[1] / "experiments"]  # + rank_weights
TRAIN = 48  # 64 synthetic images, 16 held out for validation


def fit(run: Path, *extra: str, ddp: bool, batch_size: int) -> subprocess.CompletedProcess:
    """`transfer fit` of a model without BatchNorm or dropout (tiny MLP), augmentation on, 2 epochs."""
    devices = ["-c", str(CONFIGS / "trainer" / ("ddp_cpu2.yaml" if ddp else "cpu.yaml"))]
    args = [
        sys.executable, "-m", "experiments.cli", "fit",
        "--model", "FineTuning", "--model.backbone", "tiny_mlp", "--model.pretrained", "false",
        "--data", "SyntheticDataModule", "--data.num_samples", "64", "--data.batch_size", str(batch_size),
        *devices,
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(run / "runs"),
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--checkpoint.dirpath", str(run / "checkpoints"),
        "--trainer.callbacks+", "rank_weights.SaveRankParameters", "--trainer.callbacks.directory", str(run),
        "--trainer.callbacks+", "reliability_probes.Probe", "--trainer.callbacks.directory", str(run),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, HELPERS), os.environ.get("PYTHONPATH", "")])}
    run.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "adapter", [(), ("--model.adapter", "peft.LoraConfig", "--model.adapter.r", "4")], ids=["full", "lora"]
)
def test_two_process_ddp_equals_one_process_on_the_global_batch(tmp_path, adapter):
    one, two = tmp_path / "one", tmp_path / "two"
    done = fit(one, *adapter, ddp=False, batch_size=16)
    assert done.returncode == 0, done.stderr[-3000:]
    done = fit(two, *adapter, ddp=True, batch_size=8)
    assert done.returncode == 0, done.stderr[-3000:]

    single, rank0, rank1 = read_steps(one), read_steps(two, 0), read_steps(two, 1)
    assert len(single) == len(rank0) == len(rank1) == 2 * TRAIN // 16
    for mine, a, b in zip(single, rank0, rank1, strict=True):  # each step's global batch is the same samples
        assert sorted(a["index"] + b["index"]) == sorted(mine["index"]), mine["step"]
    for epoch in (0, 1):  # each epoch: the ranks' samples together are the training set, each once
        seen = [i for r in rank0 + rank1 if r["epoch"] == epoch for i in r["index"]]
        assert sorted(seen) == list(range(TRAIN)), epoch

    expected = torch.load(one / "rank0.pt", weights_only=True)  # parameters when fit ends
    start = torch.load(one / "start_rank0.pt", weights_only=True)
    for rank in (0, 1):
        got = torch.load(two / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == expected.keys()
        for name in expected:
            difference = (got[name].double() - expected[name].double()).abs().max().item()
            assert difference <= 1e-6, f"rank {rank} {name}: {difference}"
            frozen = "base_layer" in name  # an adapter's frozen base
            assert torch.equal(expected[name], start[name]) == frozen, f"{name} trained: {not frozen}"


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process table read from /proc")
@pytest.mark.parametrize("rank", [0, 1])
def test_an_exception_in_one_rank_ends_every_rank_quickly_with_its_traceback(tmp_path, rank):
    extra = ["--trainer.callbacks.fail_at", "3", "--trainer.callbacks.fail_rank", str(rank)]
    done = fit(tmp_path, *extra, ddp=True, batch_size=8)
    ended = time.time()
    assert done.returncode != 0
    assert f"RuntimeError: probe failure in rank {rank} at step 3" in done.stderr, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in done.stderr
    failed = float((tmp_path / "failed_at").read_text())
    assert ended - failed < 90, f"the run took {ended - failed:.0f} s to end after the failure"
    deadline = time.monotonic() + 10
    while (left := processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"orphaned processes: {left}"
