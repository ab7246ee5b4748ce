"""The Optuna objects a search file names: its sampler, its pruner and the storage every worker shares."""

from __future__ import annotations

import secrets
import time
import warnings
from typing import Any, Literal

import optuna

from experiments.search.space import PRUNERS, Search

HEARTBEAT_S = 60  # a trial whose worker has not beaten for GRACE_S is failed and retried with the same values
GRACE_S = 180
STORAGE_TRIES = 5  # opening the database, when another worker is creating it at the same moment


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """`{name: successive_halving, min_resource: 1, ...}` -> the Optuna pruner (its own keyword arguments)."""
    options = {key: value for key, value in spec.items() if key != "name"}
    try:
        return getattr(optuna.pruners, PRUNERS[spec["name"]])(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"pruner: {error}") from None


def make_sampler(search: Search, reseed: bool = False) -> optuna.samplers.BaseSampler:
    """The search file's sampler; `reseed` replaces its seed by a fresh one (a worker joining a study)."""
    options = {key: value for key, value in search.sampler.items() if key != "name"}
    if reseed and "seed" in options:
        options["seed"] = secrets.randbits(31)
    try:
        if search.sampler["name"] == "grid":  # every point of the parameters' `grid` values
            return optuna.samplers.GridSampler({p.name: list(p.grid) for p in search.space}, **options)
        if search.sampler["name"] == "random":
            return optuna.samplers.RandomSampler(**options)
        return optuna.samplers.TPESampler(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sampler: {error}") from None


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Any database URL SQLAlchemy takes (sqlite:///file.db, postgresql://...), with heartbeats: a trial of a
    worker that died is failed after GRACE_S and retried with the same values (its run resumes). Or
    `journal:PATH`, Optuna's journal file (many machines on a shared file system, no server; no heartbeats)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        backend = JournalFileBackend(url.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(STORAGE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.8
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, heartbeat_stale_trial_callback=retry
                )
        except SQLAlchemyError:  # workers that start together on a new database race to create its tables
            if attempt == STORAGE_TRIES - 1:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def load_or_create(search: Search, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The search's Optuna study in `storage`: created on the first call, continued on every later one.

    The worker that creates the study samples with the search file's seed, so a search that one worker
    runs from start to end is reproducible. Every worker that joins it (another process, a submitit job, a
    re-run continuing it) draws a seed of its own: with the file's seed it would propose the very values
    the first worker proposed (Optuna's samplers draw from their own generator, not from the study)."""
    name, pruner = search.name, make_pruner(search.pruner)
    try:
        direction: Literal["minimize", "maximize"] = "minimize" if search.direction == "minimize" else "maximize"
        return optuna.create_study(
            study_name=name, storage=storage, sampler=make_sampler(search), pruner=pruner, direction=direction
        )
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(
            study_name=name, storage=storage, sampler=make_sampler(search, reseed=True), pruner=pruner
        )
