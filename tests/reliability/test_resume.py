"""Interruptions: SIGTERM mid-epoch resumes exactly; SIGKILL or a crash while saving leaves no partial file."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from reliability_probes import read_steps
from support import two_task_arguments

from callbacks import AtomicCheckpointIO, CheckpointOnSigterm, ExactResume
from datamodules import SyntheticDataModule
from experiments.cli import CONFIGS
from lightning_modules import FineTuning

HELPERS = Path(__file__).parents[1] / "helpers"
STEPS_PER_EPOCH = 6  # 64 synthetic images, 16 held out for validation, batches of 8


def sst2_folder(root: Path) -> list[str]:
    """A GLUE folder whose SST-2 has 40 training sentences of many lengths; the data arguments that read it."""
    folder = root / "glue" / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    words = [
        "the",
        "film",
        "is",
        "a",
        "fine",
        "and",
        "moving",
        "story",
        "of",
        "love",
        "loss",
        "and",
        "hope",
        "told",
        "with",
        "wit",
    ]
    rows = [f"{' '.join(words[: 2 + i % 13])}\t{i % 2}" for i in range(48)]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:40]) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[40:]) + "\n")
    (folder / "test.tsv").write_text("index\tsentence\n0\tthe film\n")
    return [
        "--model.backbone", "tiny_bert", "--data", "GLUEDataModule", "--data.task", "sst2",
        "--data.root", str(root / "glue"), "--data.group_by_length", "true", "--data.batch_size", "4",
    ]  # fmt: skip


FINE_TUNING = ("--model", "FineTuning", "--model.head_dropout", "0.3")


def fit_command(
    run: Path,
    *extra: str,
    workers: int = 0,
    epochs: int = 2,
    data: tuple[str, ...] = (),
    model: tuple[str, ...] = FINE_TUNING,
    devices: str = "cpu.yaml",
) -> tuple[list[str], dict[str, str]]:
    """`transfer fit` of a tiny CNN with dropout, warm-up + cosine schedule and augmentation (or of `model` and
    `data`, e.g. `sst2_folder`'s text), recorded by `Probe`."""
    images = [
        "--model.backbone", "tiny_cnn", "--data", "SyntheticDataModule", "--data.num_samples", "64",
        "--data.batch_size", "8",
    ]  # fmt: skip
    args = [
        sys.executable, "-m", "experiments.cli", "fit",
        *model, "--model.pretrained", "false", "--model.lr_scheduler", "lightning_modules.schedulers.WarmupLR",
        *(data or images), "--data.num_workers", str(workers),
        "-c", str(CONFIGS / "trainer" / devices),
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(run / "runs"),
        "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
        # No monitor: the checkpoints are about resuming, not about the best epoch.
        "--checkpoint.dirpath", str(run / "checkpoints"), "--checkpoint.monitor", "null",
        "--trainer.callbacks+", "reliability_probes.Probe", "--trainer.callbacks.directory", str(run),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    return args, env


def _fit(run: Path, *extra: str, **options) -> subprocess.CompletedProcess:
    args, env = fit_command(run, *extra, **options)
    return subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=180)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_close(a, b, where: str) -> None:
    """Tensors within 1e-6, everything else equal, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.allclose(a.double(), b.double(), atol=1e-6, rtol=0), f"{where}: max diff {(a - b).abs().max()}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-6), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "workers"), [("images", 0), ("images", 2), ("text", 0), ("lora", 0), ("ema", 0)])
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path, kind, workers):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    data = tuple(sst2_folder(tmp_path)) if kind == "text" else ()
    pieces = {"lora": ("--model.adapter", "peft.LoraConfig", "--model.adapter.r", "4"),
              "ema": ("-c", str(CONFIGS / "trainer" / "ema.yaml"))}  # fmt: skip

    def fit(run: Path, *extra: str) -> subprocess.CompletedProcess:
        return _fit(run, *pieces.get(kind, ()), *extra, workers=workers, data=data)

    done = fit(full)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = read_steps(full)
    steps_per_epoch = sum(r["epoch"] == 0 for r in reference)
    assert steps_per_epoch >= 4

    stop = steps_per_epoch + 2  # the third step of the second epoch
    done = fit(cut, "--trainer.callbacks.sigterm_at", str(stop))
    assert done.returncode == 143, done.stderr[-3000:]
    interrupted = load(cut / "checkpoints" / "last.ckpt")
    assert interrupted["global_step"] == stop  # exactly the completed steps
    before = read_steps(cut)
    assert [r["step"] for r in before] == list(range(1, stop + 1))
    if kind == "lora":  # the trained weights and the frozen base's fingerprint, not the base
        assert "frozen_base" in interrupted and not any("base_layer" in k for k in interrupted["state_dict"])
    else:  # with EMA, `state_dict` holds the average and `current_model_state` the trained weights
        trained = interrupted.get("current_model_state", interrupted["state_dict"])
        saved_sum = sum(t.double().sum() for k, t in trained.items() if "running" not in k and "num_batches" not in k)
        assert float(saved_sum) == pytest.approx(reference[stop - 1]["param_sum"], abs=1e-6)

    done = fit(cut, "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_steps(cut)
    # Sample order: the resumed run trains on exactly the batches the uninterrupted one did, in order.
    assert [r["index"] for r in resumed] == [r["index"] for r in reference]
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for mine, theirs in zip(resumed, reference, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6), mine["step"]
    epoch_two = [i for r in resumed if r["epoch"] == 1 for i in r["index"]]
    assert sorted(epoch_two) == list(range(len(epoch_two)))  # no sample repeated or skipped within the epoch

    final, expected = load(cut / "checkpoints" / "last.ckpt"), load(full / "checkpoints" / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == 2 * steps_per_epoch
    assert_close(final["state_dict"], expected["state_dict"], "state_dict")
    if kind == "ema":  # the average, its count and the trained weights, all as if never interrupted
        assert_close(final["averaging_state"], expected["averaging_state"], "averaging_state")
        assert_close(final["current_model_state"], expected["current_model_state"], "current_model_state")
    assert_close(final["optimizer_states"], expected["optimizer_states"], "optimizer_states")
    assert_close(final["lr_schedulers"], expected["lr_schedulers"], "lr_schedulers")


def teacher(folder: Path) -> str:
    seed_everything(1)
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
    path = folder / "teacher.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, path)
    return str(path)


IMAGES = ("--model.backbone", "tiny_cnn", "--data", "SyntheticDataModule", "--data.num_samples", "64")
STRATEGIES = {  # name -> (model, data, epochs): the cut lands in the second epoch, a third shows state carried over
    # drawn-task schedule (one task's batch per step) with DWA: its per-epoch mean losses are half-way through
    "multitask_dwa_drawn": (("--model", "MultiTask", "--model.weighting", "lightning_modules.weighting.DWA"),
                            ("--model.backbone", "tiny_cnn", *two_task_arguments(8, "proportional")), 3),
    # manual steps: per-task gradients, GradNorm's initial losses and its task weights
    "multitask_gradnorm": (("--model", "MultiTask", "--model.weighting", "lightning_modules.weighting.GradNorm"),
                           ("--model.backbone", "tiny_cnn", *two_task_arguments(8, "all")), 3),
    "contrastive": (("--model", "Contrastive", "--model.projector_dims", "[16, 8]", "--model.knn_k", "5"),
                    (*IMAGES, "--data.batch_size", "8", "--data.views", "2"), 2),
    "distillation_teacher_cache": (("--model", "Distillation", "--model.teacher_ckpt", "TEACHER",
                                    "--model.teacher_cache", "true", "--model.teacher_cache_dir", "CACHE"),
                                   (*IMAGES, "--data.batch_size", "8", "--data.augment", "false"), 2),
    # a stage every 4 steps: the cut (step 8) falls between unfreezing steps 8 and 12, mid-stage
    "gradual_unfreezing": ((*FINE_TUNING, "--trainer.callbacks+", "callbacks.GradualUnfreezing",
                            "--trainer.callbacks.unit", "step", "--trainer.callbacks.epochs_per_stage", "3"),
                           (*IMAGES, "--data.batch_size", "8"), 2),
    "ddp_two_processes": (FINE_TUNING, (*IMAGES, "--data.batch_size", "4"), 2),
}  # fmt: skip
MONITORS = {"multitask": "val/score", "contrastive": "val/knn_acc"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_resumes_from_sigterm_exactly(tmp_path, strategy):
    model, data, epochs = STRATEGIES[strategy]
    places = {"TEACHER": teacher(tmp_path), "CACHE": str(tmp_path / "cache")}
    model = tuple(places.get(argument, argument) for argument in model)
    monitor = next((m for prefix, m in MONITORS.items() if strategy.startswith(prefix)), "val/acc")
    options = {"model": model, "data": data, "epochs": epochs,
               "devices": "ddp_cpu2.yaml" if strategy.startswith("ddp") else "cpu.yaml"}  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()

    def fit(run: Path, *extra: str) -> subprocess.CompletedProcess:
        return _fit(run, "--early_stopping", "null", "--checkpoint.monitor", monitor, *extra, **options)

    done = fit(full)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = read_steps(full)
    steps_per_epoch = sum(r["epoch"] == 0 for r in reference)
    assert steps_per_epoch >= 4 and len(reference) == epochs * steps_per_epoch

    stop = steps_per_epoch + 2  # the third step of the second epoch
    done = fit(cut, "--trainer.callbacks.sigterm_at", str(stop))
    assert done.returncode != 0, done.stderr[-3000:]
    assert load(cut / "checkpoints" / "last.ckpt")["global_step"] == stop
    done = fit(cut, "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = read_steps(cut)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    assert [r["index"] for r in resumed] == [r["index"] for r in reference]  # the same batches (tasks), in order
    for mine, theirs in zip(resumed, reference, strict=True):
        assert mine["param_sum"] == pytest.approx(theirs["param_sum"], abs=1e-5), mine["step"]
        if theirs["loss"] is not None:
            assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6), mine["step"]
    final, expected = load(cut / "checkpoints" / "last.ckpt"), load(full / "checkpoints" / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == epochs * steps_per_epoch
    assert_close(final["state_dict"], expected["state_dict"], "state_dict")  # weights, weighting state, buffers
    assert_close(final["optimizer_states"], expected["optimizer_states"], "optimizer_states")
    assert_close(final["lr_schedulers"], expected["lr_schedulers"], "lr_schedulers")


@pytest.mark.slow
def test_sigkill_at_a_random_step_leaves_loadable_checkpoints_and_resumes(tmp_path):
    rng = random.Random()
    seed = rng.randrange(2**31)
    # From the second epoch on: ModelCheckpoint defers step saves until `val/acc` has been logged once.
    kill_after = random.Random(seed).randint(STEPS_PER_EPOCH + 2, 3 * STEPS_PER_EPOCH - 1)
    args = [
        "--checkpoint.every_n_train_steps", "1",
        "--trainer.callbacks.sleep", str(random.Random(seed).uniform(0.05, 0.3)),
    ]  # fmt: skip
    command, env = fit_command(tmp_path, *args, epochs=3)
    log = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while len(read_steps(tmp_path)) < kill_after:
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the step to kill at"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert checkpoints, f"no checkpoint after {kill_after} steps (seed {seed})"
    for path in checkpoints:  # none half-written: each loads
        load(path)
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    killed_steps = len(read_steps(tmp_path))
    assert 1 <= last["global_step"] <= killed_steps, f"seed {seed}"

    done = _fit(tmp_path, "--ckpt_path", "last", "--checkpoint.every_n_train_steps", "1", epochs=3)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [r["step"] for r in read_steps(tmp_path)[killed_steps:]]
    assert resumed == list(range(last["global_step"] + 1, 3 * STEPS_PER_EPOCH + 1)), f"seed {seed}"
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH
    assert not list((tmp_path / "checkpoints").glob(".*.partial")), "a killed save's temporary file was not removed"


class BrokenWriter(AtomicCheckpointIO):
    """Writes half of the `fail_on`-th checkpoint, then crashes (full disk, I/O error, bug in a hook)."""

    def __init__(self, fail_on: int):
        super().__init__()
        self.saves, self.fail_on = 0, fail_on

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        self.saves += 1
        if self.saves != self.fail_on:
            return super().save_checkpoint(checkpoint, path, storage_options)
        import callbacks.atomic_checkpoint_io as module

        real_save = module.torch.save

        def half_then_crash(obj, file):
            real_save(obj, file)
            file.truncate(file.tell() // 2)
            raise OSError(28, "No space left on device")

        module.torch.save = half_then_crash
        try:
            return super().save_checkpoint(checkpoint, path, storage_options)
        finally:
            module.torch.save = real_save


def _tiny_fit(tmp_path, writer, ckpt_path=None, max_steps=8):
    seed_everything(0)
    checkpoint = ModelCheckpoint(tmp_path / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[checkpoint, CheckpointOnSigterm(), ExactResume()], plugins=[writer], limit_val_batches=0,
    )  # fmt: skip
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
    trainer.fit(model, datamodule=SyntheticDataModule(num_samples=64, batch_size=8), ckpt_path=ckpt_path)
    return trainer


def test_a_crash_inside_checkpoint_saving_leaves_the_previous_last_ckpt_which_resumes(tmp_path):
    with pytest.raises(OSError, match="No space left"):
        _tiny_fit(tmp_path, BrokenWriter(fail_on=4))
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no partial file beside it
    assert load(folder / "last.ckpt")["global_step"] == 3  # the last complete save
    trainer = _tiny_fit(tmp_path, AtomicCheckpointIO(), ckpt_path=str(folder / "last.ckpt"))
    assert trainer.global_step == 8 and load(folder / "last.ckpt")["global_step"] == 8


WRITER = """
import sys, torch
from callbacks import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"version": torch.zeros(3)}, path)
print("writing", flush=True)
io.save_checkpoint({"version": torch.ones(3), "bulk": torch.randn(60_000_000)}, path)  # 240 MB
print("written", flush=True)
"""


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_leaves_the_old_or_the_new_file_never_a_partial(tmp_path):
    path = tmp_path / "last.ckpt"
    delay = random.uniform(0.0, 0.5)
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    finished = process.wait() == 0
    version = load(path)["version"]
    assert torch.equal(version, torch.ones(3) if finished else torch.zeros(3)), f"killed after {delay:.2f} s"
    # The next save to that name removes what the killed writer left.
    AtomicCheckpointIO().save_checkpoint({"version": torch.full((3,), 2.0)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
