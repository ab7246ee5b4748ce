"""2-process CPU DDP (gloo) against one process on the global batch, for the strategies whose state goes beyond
weights: multi-task with each weighting (DWA's loss history, GradNorm's initial losses and task weights,
Uncertainty's log-variances), contrastive learning (negatives gathered from every rank) and distillation (a
live teacher and the teacher cache). Final parameters and buffers agree within 1e-6: ranks that agree with each
other but not with one process (task gradients summed instead of averaged, per-rank statistics) fail here.

Models without BatchNorm (tiny MLP) keep batch statistics out of it: BatchNorm normalises each rank's batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import seed_everything
from support import two_task_arguments

from experiments.cli import CONFIGS
from lightning_modules import FineTuning

pytestmark = pytest.mark.slow

HELPERS = Path(__file__).parents[1] / "experiments"  # rank_weights
# Plain SGD: its update is linear in the gradient, so a gradient twice too large moves the weights twice as far
# (Adam's normalisation would hide it, to about 1e-6).
MLP = ["--model.backbone", "tiny_mlp", "--model.pretrained", "false",
       "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.1"]  # fmt: skip


def synthetic(samples: int, batch_size: int, **extra) -> list[str]:
    return ["--data", "SyntheticDataModule", "--data.num_samples", str(samples), "--data.batch_size", str(batch_size),
            *[arg for key, value in extra.items() for arg in (f"--data.{key}", str(value))]]  # fmt: skip


def multi_task(weighting: str, sampling: str = "all"):
    def arguments(ddp: bool, folder: Path) -> list[str]:
        batch_size = 8 if ddp else 16  # per process: the global batch is 16
        drawn = sampling != "all" and ddp  # one task per step: the other head is unused
        unused = ["--trainer.strategy.init_args.find_unused_parameters", "true"] if drawn else []
        return ["--model", "MultiTask", *MLP, "--model.weighting", f"lightning_modules.weighting.{weighting}",
                *two_task_arguments(batch_size, sampling), "--checkpoint.monitor", "val/score",
                "--early_stopping.init_args.monitor", "val/score", *unused]  # fmt: skip

    return arguments


def contrastive(method: str):
    def arguments(ddp: bool, folder: Path) -> list[str]:
        batch_size = 8 if ddp else 16  # per process: the global batch is 16
        return ["--model", "Contrastive", *MLP, "--model.method", method, "--model.projector_dims", "[16]",
                "--model.linear_probe", "false", "--model.knn_k", "5", *synthetic(64, batch_size, views=2),
                "--checkpoint.monitor", "val/knn_acc", "--early_stopping.init_args.monitor", "val/knn_acc"]  # fmt: skip

    return arguments


def distillation(cache: bool):
    def arguments(ddp: bool, folder: Path) -> list[str]:
        batch_size = 8 if ddp else 16  # per process: the global batch is 16
        seed_everything(1)
        teacher = FineTuning(backbone="tiny_mlp", pretrained=False, num_classes=4)
        path = folder.parent / "teacher.ckpt"
        torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, path)
        caching = ["--model.teacher_cache", "true", "--model.teacher_cache_dir", str(folder / "cache")] if cache else []
        return ["--model", "Distillation", *MLP, "--model.teacher_ckpt", str(path), *caching,
                *synthetic(64, batch_size, augment=not cache)]  # fmt: skip

    return arguments


CASES = {
    "multitask_equal_proportional": multi_task("Equal", "proportional"),
    "multitask_uncertainty": multi_task("Uncertainty"),
    "multitask_dwa": multi_task("DWA"),
    "multitask_gradnorm": multi_task("GradNorm"),
    "multitask_pcgrad": multi_task("PCGrad"),
    "contrastive_simclr": contrastive("simclr"),
    "contrastive_supcon": contrastive("supcon"),
    "distillation": distillation(cache=False),
    "distillation_teacher_cache": distillation(cache=True),
}


def fit(folder: Path, case: str, ddp: bool) -> dict[str, torch.Tensor]:
    """Three epochs (DWA weighs from the third): the global batch is 16, as 8 per rank or 16 in one process."""
    folder.mkdir(parents=True)
    devices = CONFIGS / "trainer" / ("ddp_cpu2.yaml" if ddp else "cpu.yaml")
    args = [
        sys.executable, "-m", "experiments.cli", "fit", "-c", str(devices), *CASES[case](ddp, folder),
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(folder / "runs"),
        "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", "--seed_everything", "0",
        "--checkpoint.dirpath", str(folder / "checkpoints"),
        "--trainer.callbacks+", "rank_weights.SaveRankState", "--trainer.callbacks.directory", str(folder),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    states = [torch.load(folder / f"state_rank{rank}.pt", weights_only=True) for rank in ((0, 1) if ddp else (0,))]
    for other in states[1:]:
        assert all(torch.equal(states[0][name], other[name]) for name in states[0]), "the ranks differ"
    return states[0]


@pytest.mark.parametrize("case", list(CASES))
def test_two_process_ddp_ends_where_one_process_on_the_global_batch_does(tmp_path, case):
    one, two = fit(tmp_path / "one", case, ddp=False), fit(tmp_path / "two", case, ddp=True)
    assert one.keys() == two.keys() and len(one) > 2
    for name in one:
        difference = (one[name].double() - two[name].double()).abs().max().item()
        assert difference <= 1e-6, f"{name}: {difference}"
