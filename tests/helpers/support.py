"""Helpers shared by the test modules (on the path through pytest's `pythonpath = ["tests/helpers"]`)."""

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
