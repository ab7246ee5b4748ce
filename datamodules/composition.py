"""Datamodules made of other datamodules (multi-task, relabelled): building the members, reusing their loaders.

A member is given as a factory: in YAML a `class_path`/`init_args` pair, which jsonargparse turns into a
partial holding every init argument (`Callable[[], LightningDataModule]`), so values shared by all members
(the data `root`, the backbone's `preprocessing`) can still be filled in where a member leaves them unset.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from datamodules.samplers import ResumableDataLoader

DataModuleFactory = Callable[[], L.LightningDataModule]


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_member(factory: DataModuleFactory | L.LightningDataModule, key: str, **shared: Any) -> L.LightningDataModule:
    """Instantiate a member datamodule (`key` names it in messages, e.g. `data.tasks.rte`). Each `shared`
    value that is not None goes to a member that takes that argument and leaves it None. An instance is
    used as it is."""
    if isinstance(factory, L.LightningDataModule):
        return factory
    keywords = getattr(factory, "keywords", {})
    given = {
        name: value
        for name, value in shared.items()
        if value is not None and keywords.get(name) is None and _accepts(factory, name)
    }
    try:
        member = factory(**given)
    except (ValueError, FileNotFoundError) as error:  # the member's own message names data.<key>: say which member
        raise type(error)(f"{key}: {error}") from error
    if not isinstance(member, L.LightningDataModule):
        raise TypeError(f"{key} must build a LightningDataModule, got {type(member).__name__}")
    return member


def loaders_of(loaders: Any) -> list[DataLoader]:
    """A datamodule's loader or list of loaders (several validation sets) as a list."""
    return list(loaders) if isinstance(loaders, list | tuple) else [loaders]


def with_collate(loader: DataLoader, collate_fn: Callable[[Any], Any]) -> DataLoader:
    """The same loader (dataset, batching, sampler, workers, generator, a `ResumableDataLoader`'s place in the
    epoch) with another collate function.

    Built anew rather than patched, so that Lightning, which records a loader's init arguments to rebuild it
    with a distributed sampler, rebuilds this one."""
    kind: type[DataLoader] = DataLoader
    place: dict[str, Any] = {}  # where a resumable training loader's epoch stands
    if isinstance(loader, ResumableDataLoader):
        kind, place = ResumableDataLoader, {"progress": loader.progress}
    if loader.batch_size is not None or loader.batch_sampler is None:
        batching: dict[str, Any] = {"batch_size": loader.batch_size, "sampler": loader.sampler}
        batching["drop_last"] = loader.drop_last
    else:  # a batch sampler of its own
        batching = {"batch_sampler": loader.batch_sampler}
    return kind(
        loader.dataset,
        collate_fn=collate_fn,
        generator=loader.generator,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        **batching,
        **place,
    )
