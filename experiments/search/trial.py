"""One Optuna trial: a point of the space -> `transfer fit` runs (one per seed) -> the value of the search metric.

Each run is a study run (`experiments.ablation.execute`): its own folder under `<out>/runs/`, named by the
hash of its resolved config and seed, so a trial with the values of an earlier one reuses its finished runs,
and a trial retried after a crash or Ctrl-C resumes its run from `last.ckpt`. The first seed's run carries
the pruning callback; a pruned run ends the trial as pruned.
"""

from __future__ import annotations

import os
import queue
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from experiments.ablation.execute import Processes, execute
from experiments.ablation.executors import worker_env
from experiments.ablation.plan import config_hash, resolve, runtime_args
from experiments.ablation.report import shown
from experiments.ablation.runs import RunSpec
from experiments.ablation.study import Arm
from experiments.search.pruning import callback_args, pruned_at
from experiments.search.space import Search

INTERRUPTED = "interrupted"  # user attribute of a trial stopped by Ctrl-C; the next invocation continues it
CONTINUES = "continues"  # user attribute of the trial that continues an interrupted one (its number)


class TrialFailed(RuntimeError):
    """A run of the trial failed after its retries (the search goes on; the trial is marked failed)."""


def params_text(params: dict[str, Any]) -> str:
    short = {name.split(".")[-1]: f"{v:.3g}" if isinstance(v, float) else v for name, v in params.items()}
    return ", ".join(f"{name}={value}" for name, value in short.items())


@dataclass
class Objective:
    search: Search
    out: Path
    storage_url: str
    program: Sequence[str]
    console: Console
    sets: tuple[tuple[str, Any], ...] = ()
    workers: int = 1
    retries: int = 1
    timeout: float | None = None
    processes: Processes = field(default_factory=Processes)

    def __post_init__(self) -> None:
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)

    def __call__(self, trial: optuna.Trial) -> float:
        params = {p.name: p.suggest(trial) for p in self.search.space}
        args = self.search.config_args(params, self.sets)
        full, hashed = resolve(args)
        monitor = (full.get("checkpoint") or {}).get("monitor")
        self.console.print(f"trial {trial.number}: {params_text(params)}")
        slot = self._slots.get()
        try:
            values = [self._run(trial, args, full, hashed, seed, monitor if i == 0 else None, slot)
                      for i, seed in enumerate(self.search.seeds)]  # fmt: skip
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            raise
        finally:
            self._slots.put(slot)
        value = statistics.fmean(values)
        self.console.print(f"trial {trial.number}: {self.search.metric} {value:.4f}")
        return value

    def _run(self, trial: optuna.Trial, args: list[str], full: dict[str, Any], hashed: dict[str, Any], seed: int,
             monitor: str | None, slot: int) -> float:  # fmt: skip
        directory = (self.out / "runs" / config_hash(hashed, seed)).absolute()
        extra = runtime_args(full, directory, self.search.name, Arm(f"trial-{trial.number}", ()), seed)
        if monitor is not None and self.search.pruner["name"] != "none":
            extra += callback_args(self.storage_url, self.search.name, trial._trial_id, monitor,
                                   self.search.pruner, directory)  # fmt: skip
        spec = RunSpec(self.search.name, f"trial {trial.number}", seed, directory.name, directory, tuple(args),
                       tuple(extra), Path(os.getcwd()))  # fmt: skip
        trial.set_user_attr(f"run_seed{seed}", shown(directory))
        outcome = execute(spec, self.program, self.retries, worker_env(self.workers, slot), self.processes,
                          self.timeout)  # fmt: skip
        if outcome.status == "interrupted":
            raise KeyboardInterrupt
        if not outcome.finished:
            raise TrialFailed(f"trial {trial.number}, seed {seed}: {outcome.error}")
        for key in ("fit_seconds", "wall_seconds", "epochs"):
            if key in outcome.metrics:
                trial.set_user_attr(f"{key}_seed{seed}", outcome.metrics[key])
        epoch = pruned_at(directory)
        if epoch is not None:
            trial.set_user_attr("pruned_at_epoch", epoch)
            self.console.print(f"trial {trial.number}: pruned after {epoch + 1} epochs")
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (run {shown(directory)})")
        if self.search.metric not in outcome.metrics:
            known = ", ".join(sorted(outcome.metrics))
            raise TrialFailed(f"trial {trial.number}: the runs report no {self.search.metric!r} (they have: {known})")
        return outcome.metrics[self.search.metric]


def continue_interrupted(study: optuna.Study) -> list[int]:
    """Queue a copy of every trial stopped by Ctrl-C that no trial continues yet: same values, so its run
    resumes from its last.ckpt. Returns the numbers of the trials continued."""
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get(CONTINUES) for t in trials}
    numbers = []
    for trial in trials:
        interrupted = trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(INTERRUPTED)
        if interrupted and trial.number not in continued:
            study.enqueue_trial(trial.params, user_attrs={CONTINUES: trial.number}, skip_if_exists=False)
            numbers.append(trial.number)
    return numbers


class StopAfterFailures:
    """An Optuna callback: stop this worker after `limit` failed trials in a row (a broken config or data
    fails every trial: better to say so than to burn the budget)."""

    def __init__(self, limit: int = 3):
        self.limit, self.in_a_row = limit, 0

    @property
    def stopped(self) -> bool:
        return self.in_a_row >= self.limit

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == optuna.trial.TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED)
        self.in_a_row = self.in_a_row + 1 if failed else 0
        if self.stopped:
            study.stop()
