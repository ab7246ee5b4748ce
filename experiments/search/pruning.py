"""Optuna's Lightning pruning callback inside a trial's `transfer fit` subprocess.

`transfer tune` adds it to the first seed's run of every trial (`--trainer.callbacks+=...`), never a config.
It reaches the trial through the shared storage; when Optuna's pruner says stop, the run stops training
cleanly (it still tests its best checkpoint and writes its results) and leaves `pruned.json` in its folder,
which the search reads as "pruned at epoch N"; at its last epoch a run is never pruned (nothing is left to
save). A resumed run first re-reports the epochs it already has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch import LightningModule, Trainer
from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

from experiments.ablation.runs import read_history, read_json, write_json
from experiments.search.optuna_parts import make_pruner, make_storage

PRUNED = "pruned.json"


class TrialPruning(PyTorchLightningPruningCallback):
    """Reports `monitor` after every validation to Optuna trial `trial_id`; stops the run when it is pruned.

    Args:
        storage: The search's database URL (or `journal:PATH`).
        study_name: The Optuna study (the search's name).
        trial_id: The trial this run belongs to.
        monitor: The validation metric the pruner compares, e.g. `val/score`.
        pruner: The search file's pruner (`{name: ..., options}`), as the search builds it.
        dirpath: The run folder (`pruned.json` goes there).
    """

    def __init__(self, storage: str, study_name: str, trial_id: int, monitor: str, pruner: dict[str, Any],
                 dirpath: str):  # fmt: skip
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage), pruner=make_pruner(pruner))
        super().__init__(optuna.trial.Trial(study, trial_id), monitor)
        self.dirpath = Path(dirpath)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if trainer.is_global_zero:  # a resumed run: the epochs before the interruption count as well
            reported = self._trial.storage.get_trial(self._trial._trial_id).intermediate_values
            for row in read_history(self.dirpath):
                if row["epoch"] < trainer.current_epoch and row["epoch"] not in reported and self.monitor in row:
                    self._trial.report(row[self.monitor], step=row["epoch"])

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # At the run's last epoch the compute is spent: its value is reported and the trial completes (a trial
        # pruned there would count as pruned, its full result lost to the choice of the best trial).
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= pl_module.current_epoch + 1
        try:
            super().on_validation_end(trainer, pl_module)
        except optuna.TrialPruned as pruned:
            if not last:
                trainer.should_stop = True
                self._mark(pl_module.current_epoch, str(pruned))
            return
        if self.is_ddp_backend and trainer.should_stop and trainer.is_global_zero and not last:
            attrs = self._trial.storage.get_trial_system_attrs(self._trial._trial_id)
            if attrs.get("ddp_pl:pruned"):
                self._mark(pl_module.current_epoch, f"Trial was pruned at epoch {pl_module.current_epoch}.")

    def _mark(self, epoch: int, message: str) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        write_json(self.dirpath / PRUNED, {"epoch": epoch, "message": message})


def pruned_at(directory: Path) -> int | None:
    """The epoch a run was pruned at, None when it was not."""
    marker = read_json(directory / PRUNED)
    return int(marker["epoch"]) if isinstance(marker, dict) else None


def callback_args(storage: str, study_name: str, trial_id: int, monitor: str, pruner: dict[str, Any],
                  directory: Path) -> list[str]:  # fmt: skip
    """The `transfer fit` arguments that add the callback to a run."""
    init = {"storage": storage, "study_name": study_name, "trial_id": trial_id, "monitor": monitor,
            "pruner": pruner, "dirpath": str(directory)}  # fmt: skip
    args = [f"--trainer.callbacks+={TrialPruning.__module__}.TrialPruning"]
    for key, value in init.items():
        args += [f"--trainer.callbacks.init_args.{key}", value if isinstance(value, str) else json.dumps(value)]
    return args
