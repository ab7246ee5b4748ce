"""Helpers shared by the test modules (on the path through pytest's `pythonpath = ["tests/helpers"]`)."""

import json
from pathlib import Path

from lightning import Callback, Trainer

from experiments.cli import CONFIGS

GLUE_FIXTURES = Path(__file__).parents[1] / "datamodules" / "fixtures" / "glue"
# CLI overrides that run a GLUE config on the fixtures with a tiny random encoder.
TINY_GLUE = [
    "--model.init_args.backbone",
    "tiny_bert",
    "--model.init_args.pretrained",
    "false",
    "--data.init_args.root",
    str(GLUE_FIXTURES),
]


# `transfer fit` arguments of a tiny CNN on synthetic images, on the CPU, logged to CSV (seed 3).
TINY_RUN = [
    "--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
    "--data", "SyntheticDataModule", "--data.num_samples", "64", "--data.batch_size", "8",
    "-c", str(CONFIGS / "trainer" / "cpu.yaml"), "-c", str(CONFIGS / "logger" / "csv.yaml"),
    "--trainer.enable_progress_bar", "false", "--seed_everything", "3",
]  # fmt: skip


def quiet_trainer(*callbacks: Callback, **kwargs) -> Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or summary: tests assert on the model."""
    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        max_epochs=2,
    )
    return Trainer(callbacks=[*callbacks, *kwargs.pop("callbacks", [])], **(defaults | kwargs))


def two_task_arguments(batch_size: int, sampling: str) -> list[str]:
    """`transfer fit` data arguments of two synthetic classification tasks (the second a relabelling of another
    draw into two classes), for multi-task runs in a subprocess."""

    def images(samples: int, seed: int) -> dict:
        options = {"num_samples": samples, "batch_size": batch_size, "seed": seed}
        return {"class_path": "datamodules.SyntheticDataModule", "init_args": options}

    groups = {"low": ["class_0", "class_1"], "high": ["class_2", "class_3"]}
    coarse = {"source": images(48, 1), "groups": groups}
    tasks = {"fine": images(64, 0), "coarse": {"class_path": "datamodules.RelabeledDataModule", "init_args": coarse}}
    return ["--data", "MultiTaskDataModule", "--data.tasks", json.dumps(tasks), "--data.sampling", sampling]
