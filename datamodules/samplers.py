"""Training order that an interrupted and resumed run reproduces exactly, to the sample.

The order of epoch e is a permutation drawn from `seed + e` alone; each index carries the seed of its
sample's augmentation in that epoch (`SampleIndex`), so what a sample looks like depends on (training seed,
epoch, index) and not on worker processes, ranks or interruptions. A `ResumableDataLoader` tells
Lightning's checkpoints how far into the epoch the training loop got, and starts there on resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """splitmix64's finaliser: nearby inputs give unrelated outputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch` of a run seeded with `seed` (63 bits)."""
    return _mix(_mix(_mix(seed) ^ epoch) ^ index) >> 1


class SampleIndex(int):
    """A dataset index that carries its sample's augmentation seed (`ImageDataset` draws with it).

    It passes through DataLoader workers and `dataset[i]` like any int.
    """

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleIndex:
        value = super().__new__(cls, index)
        value.seed = seed
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return SampleIndex, (int(self), self.seed)


def world_and_rank() -> tuple[int, int]:
    """The size of the initialised process group and this process's rank in it; (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class Resumable:
    """What `ResumableDataLoader` needs of a `DistributedSampler`: `resume(epoch, consumed)` makes its next
    iteration of `epoch` start after this rank's first `consumed` indices (`_skip` applies it once)."""

    epoch: int
    seed: int
    num_replicas: int
    _resume: tuple[int, int] | None = None

    def resume(self, epoch: int, consumed: int) -> None:
        self.set_epoch(epoch)  # type: ignore[attr-defined]
        self._resume = (epoch, consumed)

    def _skip(self) -> int:
        resume, self._resume = self._resume, None
        return resume[1] if resume is not None and resume[0] == self.epoch else 0


class EpochSeededRandomSampler(Resumable, DistributedSampler):
    """A permutation drawn from `seed + epoch` alone (the training seed, `PL_GLOBAL_SEED`, by default), so
    epoch e has the same order whether or not the run was interrupted before it; Lightning calls `set_epoch`.

    Under DDP (an initialised process group) rank r takes every r-th index of the padded permutation, as
    `DistributedSampler` does; being one, it is left in place by Lightning, and the ranks' samples together
    are the global batch one process would draw. `resume(epoch, consumed)` makes the next iteration of that
    epoch start after the rank's first `consumed` indices.
    """

    def __init__(
        self,
        data_source: Any,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
    ):
        world, own_rank = world_and_rank()
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        super().__init__(
            data_source,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=own_rank if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
        )
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())[self._skip() :]
        return iter([SampleIndex(i, sample_seed(self.seed, self.epoch, i)) for i in order])


# (training batches finished in the current epoch, batches per epoch), asked when a checkpoint is written
TrainingProgress = Callable[[], tuple[int, float]]


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose place in the epoch goes into Lightning's checkpoints.

    Lightning saves `state_dict()` of every training loader that has one, and hands it to `load_state_dict()`
    before a resumed run creates its iterator: the sampler then continues the interrupted epoch after the
    batches already trained on, with no sample repeated or skipped. `progress` reports how many batches the
    training loop has finished (the datamodule asks its trainer); the DataLoader itself cannot know, since
    workers and Lightning fetch ahead.
    """

    def __init__(self, *args: Any, progress: TrainingProgress | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, Resumable):
            return {}
        done, per_epoch = self.progress() if self.progress is not None else (0, float("inf"))
        epoch = sampler.epoch
        if done >= per_epoch:  # saved at the end of an epoch: the next one starts from its beginning
            epoch, done = epoch + 1, 0
        # Positions of the epoch's (padded) order consumed by all ranks together: rank r took every r-th.
        per_batch = self.batch_size or 1  # batch_size None: each element of the sampler is a whole batch
        samples = int(done) * per_batch * sampler.num_replicas
        return {"epoch": epoch, "samples": samples, "seed": sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if not state or not isinstance(sampler, Resumable):
            return
        # Another order, or a cut between ranks, than the interrupted run's: the count would not say which
        # samples were seen.
        if state["seed"] != sampler.seed:
            raise ValueError(
                f"the checkpoint's training order comes from seed {state['seed']}, this run's from {sampler.seed}: "
                "resume with the interrupted run's seed_everything"
            )
        if state["samples"] % sampler.num_replicas:
            raise ValueError(
                f"the checkpoint stopped {state['samples']} samples into epoch {state['epoch']}, which "
                f"{sampler.num_replicas} processes cannot split evenly: resume with the interrupted run's devices"
            )
        sampler.resume(state["epoch"], state["samples"] // sampler.num_replicas)


def progress_of(owner: Any) -> TrainingProgress:
    """The `progress` of a `ResumableDataLoader` made by `owner` (a datamodule): from its trainer, (training
    batches finished in this epoch, batches per epoch), where a checkpoint leaves the epoch."""

    def progress() -> tuple[int, float]:
        trainer = getattr(owner, "trainer", None)
        if trainer is None:
            return 0, float("inf")
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.num_training_batches

    return progress


def make_loader(
    owner: Any,
    dataset: Dataset,
    *,
    batch_size: int | None,
    seed: int,
    train_sampler: Sampler | None = None,
    collate_fn: Any = None,
    num_workers: int = 0,
    persistent: bool = True,
    drop_last: bool = False,
) -> DataLoader:
    """How every loader of `owner` (a datamodule) is built: its workers' seeds come from `seed` (`loader_generator`),
    never from the global generator; a training loader (the one given `train_sampler`) is a `ResumableDataLoader`
    whose place in the epoch goes into the checkpoints; an evaluation loader keeps the dataset's order."""
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "collate_fn": collate_fn,
        "num_workers": num_workers,
        "persistent_workers": persistent and num_workers > 0,
        "drop_last": drop_last,
        "generator": loader_generator(seed),
    }
    if train_sampler is None:
        return DataLoader(dataset, **options)
    return ResumableDataLoader(dataset, sampler=train_sampler, progress=progress_of(owner), **options)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator, seeded with `seed`: each new iterator draws its workers' base seed from
    it (even with no workers), not from the global generator, whose stream dropout uses and a resumed run
    restores."""
    return torch.Generator().manual_seed(seed)
