"""Helpers shared by the test modules (on the path through pytest's `pythonpath = ["tests/helpers"]`)."""

from lightning import Callback, Trainer


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
