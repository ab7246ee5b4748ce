"""MultiTaskDataModule: several tasks, one datamodule each, for one shared backbone.

Batches are `{task_name: batch}`. Training either gives every task's batch at each step (Lightning's
`CombinedLoader`) or draws one task per step (`TaskSchedule`, a sampler of our own); validation and test
run one loader per task (and per validation set of a task, e.g. MNLI's two), each batch `{task: batch}`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.collate import LengthGroupedSampler, longest_first_batches
from datamodules.composition import DataModuleFactory, build_member, loaders_of, with_collate
from datamodules.samplers import (
    Resumable,
    ResumableDataLoader,
    SampleIndex,
    TrainingProgress,
    make_loader,
    sample_seed,
)
from datamodules.transforms import Preprocessing

Sampling = Literal["all", "proportional", "uniform", "temperature"]
EpochLength = Literal["max_size_cycle", "min_size"]

# sampling -> unnormalised task probabilities from each task's batches per epoch n and the temperature T
TASK_WEIGHTS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "proportional": lambda n, t: n,
    "uniform": lambda n, t: np.ones_like(n),
    "temperature": lambda n, t: n ** (1.0 / t),
}
EPOCH_LENGTH: dict[str, Callable[[Sequence[float]], float]] = {"max_size_cycle": max, "min_size": min}
TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ORDER = 11  # stream id of the task order: independent of the row streams, [seed, epoch, task, cycle]
_GROUPS = 13  # stream id of the order of length-grouped batches within a chunk


def check_task_names(names: Sequence[str], key: str) -> None:
    """Task names appear in metric names (`val/<task>/acc`) and as module keys: a letter, then letters,
    digits, `_` or `-`; not a name `nn.ModuleDict` already has (`train`, `eval`, ...)."""
    if not names:
        raise ValueError(f"{key} is empty: give at least one task")
    reserved = set(dir(torch.nn.ModuleDict))
    bad = [n for n in names if not TASK_NAME.fullmatch(n) or n in reserved]
    if bad:
        raise ValueError(
            f"{key}: task names {bad} are not allowed: a letter, then letters, digits, _ or -, and not a method name "
            "of nn.ModuleDict (train, eval, keys, ...)"
        )


def task_probabilities(batches: Sequence[int], sampling: str, temperature: float = 1.0) -> np.ndarray:
    """Probability of drawing each task at a step, from its batches per epoch: `proportional` (MT-DNN,
    Liu et al. 2019), `uniform`, or `temperature`, n^(1/T) normalised (Arivazhagan et al. 2019; T=1 is
    proportional, large T uniform)."""
    weights = TASK_WEIGHTS[sampling](np.asarray(batches, dtype=np.float64), temperature)
    return weights / weights.sum()


def epoch_steps(batches: Sequence[int], probabilities: Sequence[float], epoch: str) -> int:
    """Steps of one epoch: until the task that runs out of batches last (`max_size_cycle`) or first
    (`min_size`) has drawn as many batches as it has; task t runs out after n_t / p_t steps. With every
    task at every step (p = 1) these are Lightning's CombinedLoader modes of the same names."""
    return max(1, math.ceil(EPOCH_LENGTH[epoch]([n / p for n, p in zip(batches, probabilities, strict=True)]) - 1e-6))


def apportion(probabilities: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to `total`, as close to `probabilities * total` as possible (largest remainder)."""
    quotas = np.asarray(probabilities, dtype=np.float64) * total
    counts = np.floor(quotas + 1e-9).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def within_cycle(progress: TrainingProgress, batches: int) -> TrainingProgress:
    """The place of a task's loader that `CombinedLoader` cycles (`max_size_cycle` restarts a task that runs
    out, in the same epoch and order): the epoch's finished steps modulo the task's `batches`."""

    def place() -> tuple[int, float]:
        done, per_epoch = progress()
        return (done if done >= per_epoch else done % batches), per_epoch

    return place


class TaskSchedule(Resumable, DistributedSampler):
    """One element per training step: `(task index, row indices of this rank's batch)`.

    An epoch holds each task's share of the steps exactly (`apportion`), in an order drawn from
    `seed + epoch`, the same on every rank, so all ranks train the same task at a step. Each task reads its
    rows from a stream of permutations (a new one when it runs out, so small tasks cycle); each step takes
    `batch_size * num_replicas` rows of it and rank r its r-th slice. It is a `DistributedSampler` so that
    Lightning leaves it in place under DDP; Lightning calls `set_epoch`.

    A task given `lengths` has its batches grouped by length, as `LengthGroupedSampler` does for one
    task: each chunk of `chunk_batches` batches of its stream is sorted by length, cut into batches, and
    those batches are shuffled (less padding, the same rows per epoch).

    Args:
        sizes: Rows of each task.
        batch_sizes: Rows per batch (per rank) of each task.
        probabilities: Each task's share of the steps.
        steps: Steps per epoch.
        lengths: Per task, each row's length to group batches by, or None (random batches).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_sizes: Sequence[int],
        probabilities: Sequence[float],
        steps: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int | None = None,
        lengths: Sequence[Sequence[int] | np.ndarray | None] | None = None,
        chunk_batches: int = 50,
    ):
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        # range(steps) stands in for the dataset: DistributedSampler only takes its len().
        super().__init__(range(steps), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        if min(sizes) < 1 or min(batch_sizes) < 1:
            raise ValueError(
                f"every task needs rows and a batch size >= 1, got {sizes} rows, batch sizes {batch_sizes}"
            )
        self.sizes = list(sizes)
        self.batch_sizes = list(batch_sizes)
        self.counts = apportion(probabilities, steps)
        self.steps = steps
        self.lengths = [None if n is None else np.asarray(n) for n in (lengths or [None] * len(sizes))]
        if len(self.lengths) != len(self.sizes) or chunk_batches < 1:
            raise ValueError(f"lengths must name {len(self.sizes)} tasks and chunk_batches be >= 1")
        self.chunk_batches = chunk_batches

    def __len__(self) -> int:
        return self.steps

    def task_order(self) -> np.ndarray:
        """The task of each step of the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, _ORDER])
        return rng.permutation(np.repeat(np.arange(len(self.sizes)), self.counts))

    def _batches(self, task: int) -> Iterator[list[SampleIndex]]:
        width = self.batch_sizes[task] * self.num_replicas
        lengths = self.lengths[task]
        chunk_size = width * (self.chunk_batches if lengths is not None else 1)
        buffer, cycle, chunk = np.empty((0, 2), dtype=np.int64), 0, 0  # rows: (row, cycle of the stream)
        while True:
            while len(buffer) < chunk_size:
                drawn = np.random.default_rng([self.seed, self.epoch, task, cycle]).permutation(self.sizes[task])
                buffer = np.concatenate([buffer, np.stack([drawn, np.full_like(drawn, cycle)], axis=1)])
                cycle += 1
            taken, buffer = buffer[:chunk_size], buffer[chunk_size:]
            batches = taken.reshape(-1, width, 2)
            if lengths is not None:  # longest first, then the chunk's batches in random order
                batches = np.stack(longest_first_batches(taken, lengths[taken[:, 0]], width))
                batches = batches[
                    np.random.default_rng([self.seed, self.epoch, task, chunk, _GROUPS]).permutation(len(batches))
                ]
            chunk += 1
            for batch in batches:
                mine = batch[self.rank * self.batch_sizes[task] : (self.rank + 1) * self.batch_sizes[task]]
                yield [self._sample(task, c, row) for row, c in mine.tolist()]

    def _sample(self, task: int, cycle: int, row: int) -> SampleIndex:
        """Row `row` with its augmentation seed: from (seed, epoch, task, cycle, row) alone, as on one process."""
        return SampleIndex(row, sample_seed(sample_seed(self.seed, task, cycle), self.epoch, row))

    def __iter__(self) -> Iterator[tuple[int, list[SampleIndex]]]:  # type: ignore[override]
        skip = self._skip()  # a resumed epoch: its first steps were trained before the interruption
        streams = [self._batches(task) for task in range(len(self.sizes))]
        for step, task in enumerate(self.task_order().tolist()):
            rows = next(streams[task])  # drawn even when skipped, so that later steps get the same rows
            if step >= skip:
                yield task, rows


class TaskBatches(Dataset):
    """Indexed by `(task index, rows)`: that task's rows collated by its own collate function, as `{task: batch}`."""

    def __init__(self, names: list[str], datasets: list[Any], collates: list[Callable[[Any], Any]]):
        self.names, self.datasets, self.collates = names, datasets, collates

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, list[int]]) -> dict[str, Any]:
        task, rows = key
        dataset = self.datasets[task]
        items = dataset.__getitems__(rows) if hasattr(dataset, "__getitems__") else [dataset[i] for i in rows]
        return {self.names[task]: self.collates[task](items)}


class TaskCollate:
    """A member's collate function whose batch comes back as `{task: batch}`."""

    def __init__(self, task: str, collate_fn: Callable[[Any], Any]):
        self.task, self.collate_fn = task, collate_fn

    def __call__(self, items: Any) -> dict[str, Any]:
        return {self.task: self.collate_fn(items)}


class MultiTaskDataModule(L.LightningDataModule):
    """Several tasks for one shared backbone (`lightning_modules.MultiTask`); batches are `{task: batch}`.

    Each task is a datamodule of its own (GLUE tasks, an image dataset and a relabelled view of it, ...)
    that names its classes and metrics (`num_classes`, `metrics`, `val_names`); `task_specs` collects them
    and the CLI links them into the model (one head and one metric set per task).

    Training order (`sampling`):

    - `all`: every task's batch at every step, through Lightning's `CombinedLoader`; the members' own
      training loaders (and samplers) are used. Needed by the gradient weightings (GradNorm, PCGrad).
    - `proportional`, `uniform`, `temperature`: one task's batch per step, task t drawn with probability
      p_t from its batches per epoch n_t (`task_probabilities`); each epoch holds exactly round(p_t * steps)
      steps of task t, in random order (`TaskSchedule`), the same on every rank. `proportional` with the
      default `epoch` is MT-DNN's: every batch of every task once per epoch. A member's `group_by_length`
      is kept: its batches hold rows of similar lengths.

    Epoch length (`epoch`): `max_size_cycle` lasts until the task that runs out last has been through its
    batches, the others cycling; `min_size` ends when the first task runs out (task t runs out after
    n_t / p_t steps, p_t = 1 for `all`). Validation and test: one loader per task and validation set, in
    task order; the model names their metrics `val/<task>/<metric>`.

    Args:
        tasks: Task name -> its datamodule (`class_path`/`init_args` in YAML). Names go into metric names:
            a letter, then letters, digits, `_` or `-`.
        sampling: `all`, `proportional`, `uniform` or `temperature` (see above).
        temperature: T of `temperature` sampling: p_t proportional to n_t^(1/T).
        epoch: `max_size_cycle` or `min_size` (see above).
        root: Given to every member that takes a `root` and sets none (e.g. the GLUE folder of all tasks).
        preprocessing: The backbone's input contract (linked from `model.backbone`), given to every member
            that sets none.
        num_workers: Loader workers of the drawn-task training loader (`all` uses the members' loaders).
    """

    def __init__(
        self,
        tasks: dict[str, DataModuleFactory],
        sampling: Sampling = "all",
        temperature: float = 2.0,
        epoch: EpochLength = "max_size_cycle",
        root: str | None = None,
        preprocessing: Preprocessing | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        check_task_names(list(tasks), "data.tasks")
        if sampling not in ("all", *TASK_WEIGHTS):
            raise ValueError(f"data.sampling must be all or one of {sorted(TASK_WEIGHTS)}, got {sampling!r}")
        if epoch not in EPOCH_LENGTH:
            raise ValueError(f"data.epoch must be one of {sorted(EPOCH_LENGTH)}, got {epoch!r}")
        if temperature <= 0:
            raise ValueError(f"data.temperature must be > 0, got {temperature}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.sampling = sampling
        self.temperature = temperature
        self.epoch = epoch
        self.root = root
        self.preprocessing = preprocessing
        self.num_workers = num_workers
        self.members = {
            name: build_member(factory, f"data.tasks.{name}", root=root, preprocessing=preprocessing)
            for name, factory in tasks.items()
        }

    def __repr__(self) -> str:
        # Lightning's default __str__ calls every *_dataloader(), which would read (and tokenize) the data.
        tasks = ", ".join(f"{name}={member!r}" for name, member in self.members.items())
        return f"{type(self).__name__}(sampling={self.sampling!r}, epoch={self.epoch!r}, tasks={{{tasks}}})"

    __str__ = __repr__

    # --- what the model reads right after __init__ (no data read) -------------------------------------

    @property
    def task_names(self) -> list[str]:
        return list(self.members)

    @property
    def task_specs(self) -> dict[str, dict[str, Any]]:
        """Per task: `num_classes` (1: regression), `metrics` and `val_names`; linked into `model.tasks`.
        Plain values, so that they stay loadable from checkpoints with `weights_only=True`."""
        specs = {}
        for name, member in self.members.items():
            missing = [a for a in ("num_classes", "metrics", "val_names") if not hasattr(member, a)]
            if missing:
                raise ValueError(f"data.tasks.{name} ({type(member).__name__}) has no {missing}: it cannot be a task")
            specs[name] = {
                "num_classes": int(member.num_classes),  # type: ignore[attr-defined]
                "metrics": list(member.metrics),  # type: ignore[attr-defined]
                "val_names": list(member.val_names),  # type: ignore[attr-defined]
            }
        return specs

    def input_spec(self) -> dict[str, Any] | None:
        """Each task's inputs and labels (`TransferDataModule.input_spec`, `TextDataModule.input_spec`); None when
        a task's datamodule does not say."""
        specs = {name: getattr(member, "input_spec", lambda: None)() for name, member in self.members.items()}
        return {"type": "multi_task", "tasks": specs} if None not in specs.values() else None

    @property
    def val_sets(self) -> list[tuple[str, str]]:
        """(task, validation set name) of each validation loader, in loader order."""
        return [(task, name) for task, spec in self.task_specs.items() for name in spec["val_names"]]

    def fingerprint(self, split: str | None = None) -> str:
        """sha256 of the members' fingerprints (those that have one) and the training order settings."""
        digest = hashlib.sha256(f"multi-task-v1 {self.sampling} {self.temperature} {self.epoch}".encode())
        for name, member in self.members.items():
            fingerprint = getattr(member, "fingerprint", None)
            digest.update(f"{name}={fingerprint(split) if fingerprint is not None else type(member).__name__}".encode())
        return digest.hexdigest()

    # --- data ----------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        for member in self.members.values():
            member.prepare_data()

    def setup(self, stage: str) -> None:
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if model is not None and getattr(model, "task_names", None) != self.task_names:
            raise ValueError(
                f"MultiTaskDataModule serves {{task: batch}} for tasks {self.task_names}: it needs model MultiTask "
                f"with the same tasks (linked from data.task_specs), got {type(model).__name__} with "
                f"{getattr(model, 'task_names', None)}"
            )
        for member in self.members.values():
            member.trainer = self.trainer  # samplers that shard by rank ask the member's trainer
            member.setup(stage)

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        loaders = {name: member.train_dataloader() for name, member in self.members.items()}
        if self.sampling == "all":
            for loader in loaders.values():
                if isinstance(loader, ResumableDataLoader) and loader.progress is not None:
                    loader.progress = within_cycle(loader.progress, len(loader))
            return CombinedLoader(loaders, mode=self.epoch)
        replicas, rank = self._replicas()
        for name, loader in loaders.items():
            if not isinstance(loader, DataLoader) or loader.batch_size is None:
                raise ValueError(
                    f"data.sampling={self.sampling} draws batches itself: data.tasks.{name} must give a DataLoader "
                    f"with a batch_size, got {type(loader).__name__}"
                )
        names = list(loaders)
        sizes = [len(loader.dataset) for loader in loaders.values()]  # type: ignore[arg-type]
        batch_sizes = [int(loader.batch_size) for loader in loaders.values()]  # type: ignore[arg-type]
        batches = [math.ceil(n / (b * replicas)) for n, b in zip(sizes, batch_sizes, strict=True)]
        probabilities = task_probabilities(batches, self.sampling, self.temperature).tolist()
        steps = epoch_steps(batches, probabilities, self.epoch)
        grouped = [
            loader.sampler if isinstance(loader.sampler, LengthGroupedSampler) else None for loader in loaders.values()
        ]
        schedule = TaskSchedule(
            sizes,
            batch_sizes,
            probabilities,
            steps,
            num_replicas=replicas,
            rank=rank,
            lengths=[None if g is None else g.lengths.numpy() for g in grouped],  # a member's group_by_length
            chunk_batches=min((g.chunk_batches for g in grouped if g is not None), default=50),
        )
        dataset = TaskBatches(names, [d.dataset for d in loaders.values()], [d.collate_fn for d in loaders.values()])
        # batch_size=None: each element of the schedule is already one whole batch.
        return make_loader(
            self, dataset, batch_size=None, seed=schedule.seed, train_sampler=schedule, num_workers=self.num_workers
        )

    def _eval_loaders(self, kind: str) -> list[DataLoader]:
        result = []
        for name, member in self.members.items():
            loaders = loaders_of(getattr(member, f"{kind}_dataloader")())
            expected = len(member.val_names) if kind != "predict" else len(loaders)  # type: ignore[attr-defined]
            if len(loaders) != expected:
                raise ValueError(
                    f"data.tasks.{name} gives {len(loaders)} {kind} loaders for {expected} validation sets (val_names)"
                )
            result += [with_collate(loader, TaskCollate(name, loader.collate_fn)) for loader in loaders]
        return result

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per (task, validation set), in `val_sets` order."""
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("predict")
