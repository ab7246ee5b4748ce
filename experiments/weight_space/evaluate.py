"""Read checkpoints' weights, evaluate any state dict on validation and test (shift sets included), write one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callbacks import AtomicCheckpointIO
from datamodules.cache import write_atomically
from lightning_modules.checkpoints import read_checkpoint
from lightning_modules.frozen_base import FROZEN_BASE, tensors_sha256
from lightning_modules.weight_space import StateDict

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def read_weights(path: Path) -> tuple[StateDict, dict[str, Any]]:
    """A checkpoint's `state_dict` (loaded with weights_only) and the checkpoint; adapter runs are refused."""
    file, checkpoint = read_checkpoint(str(path), "checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"checkpoint {file} has no state_dict: not a checkpoint of a `transfer fit` run")
    if FROZEN_BASE in checkpoint:
        raise ValueError(f"checkpoint {file} holds an adapter without its frozen base: `transfer merge {path}` first")
    return checkpoint["state_dict"], checkpoint


def write_weights(state: StateDict, template: dict[str, Any], path: Path, made_from: dict[str, Any]) -> Path:
    """`state` as a checkpoint that `transfer test --ckpt_path` reads (the hyper_parameters of `template`)."""
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": template.get("hyper_parameters", {}),
        "pytorch-lightning_version": template.get("pytorch-lightning_version"),
        "made_from": made_from,
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    return path


class Evaluator:
    """The model, data and trainer of a config (`-c` files and keys, as `transfer test` takes them), built once;
    `evaluate(state)` loads a state dict and returns its validation and test metrics (one dict, every set).

    With `done` (a folder), every evaluation is kept there, named by the weights and the config, so a command
    run again after an interruption evaluates only what it had not (on a CPU, testing under the 15 corruptions
    takes minutes per model)."""

    def __init__(self, config_args: Sequence[str], done: Path | None = None):
        from experiments.cli import cli_main

        self.cli = cli_main([*config_args, *QUIET], run=False)
        self.done, self.config = done, json.dumps(list(config_args))

    def evaluate(self, state: StateDict, test: bool = True) -> dict[str, float]:
        record = self._record(state, test)
        if record is not None and record.is_file():
            return {name: float(value) for name, value in json.loads(record.read_text()).items()}
        model, data, trainer = self.cli.model, self.cli.datamodule, self.cli.trainer
        model.load_state_dict(state)
        results = trainer.validate(model, datamodule=data, verbose=False)
        if test:
            results += trainer.test(model, datamodule=data, verbose=False)
        metrics = {name: float(value) for per_loader in results for name, value in per_loader.items()}
        if record is not None:
            write_atomically(record, lambda handle: handle.write(json.dumps(metrics, indent=1).encode()))
        return metrics

    def _record(self, state: StateDict, test: bool) -> Path | None:
        if self.done is None:
            return None
        key = f"{tensors_sha256(state, sorted(state))}|{self.config}|test={test}"
        return self.done / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
