"""Record what a run needs to be reproduced: git commit, package versions, seed, data fingerprint, classes."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "timm",
    "transformers",
    "wandb",
    "jsonargparse",
    "transfer",
)


def git_state(directory: Path) -> dict[str, Any]:
    """Commit and dirtiness of the repository holding `directory`; None when it is not one."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def class_table(datamodule: Any) -> list[dict[str, Any]] | None:
    """The label order: the datamodule's `class_info()` rows (e.g. wnid, ImageNet index, name), else its
    `class_names`; None when it names no classes."""
    if hasattr(datamodule, "class_info"):
        return datamodule.class_info()
    names = getattr(datamodule, "class_names", None)
    return [{"label": i, "name": name} for i, name in enumerate(names)] if names else None


def run_metadata(trainer: Trainer) -> dict[str, Any]:
    datamodule = getattr(trainer, "datamodule", None)
    fingerprint = getattr(datamodule, "fingerprint", None)
    seed = os.environ.get("PL_GLOBAL_SEED")
    return {
        "git": git_state(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "seed": int(seed) if seed is not None else None,
        "data_fingerprint": fingerprint() if fingerprint is not None else None,
        "classes": class_table(datamodule),
        "platform": platform.platform(),
    }


class RunMetadata(Callback):
    """Writes `run_metadata.json` into the run's log directory and logs the same into the logger, when a
    run fits, validates or tests. Every checkpoint holds it too (`checkpoint["run"]`), with the command line,
    the run's config (the CLI's `config.yaml`, when written) and the validation metrics at that checkpoint:
    what `transfer export` puts into a model card."""

    def __init__(self, filename: str = "run_metadata.json", config_filename: str = "config.yaml"):
        self.filename = filename
        self.config_filename = config_filename
        self.command: str | None = None  # the command line of the run (set by the CLI), else this process's
        self._info: dict[str, Any] = {}
        self._log_dir: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate", "test"):
            return
        self._log_dir = trainer.log_dir  # collective on some loggers: every rank must call it
        self._info = run_metadata(trainer)
        self._write(trainer, self._log_dir)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        config = Path(self._log_dir) / self.config_filename if self._log_dir is not None else None
        checkpoint["run"] = {
            **self._info,
            "command": self.command or shlex.join(sys.argv),
            "config": config.read_text() if config is not None and config.is_file() else None,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
        }

    @rank_zero_only
    def _write(self, trainer: Trainer, log_dir: str | None) -> None:
        info = self._info
        if log_dir is not None:
            path = Path(log_dir) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(info, indent=2) + "\n")
        for logger in trainer.loggers:
            logger.log_hyperparams({"run": info})
