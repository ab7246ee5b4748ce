"""Shuffling that a resumed run reproduces exactly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import RandomSampler


class EpochSeededRandomSampler(RandomSampler):
    """A permutation drawn from `seed + epoch` alone, so epoch e has the same order whether or not the run
    was interrupted before it. Lightning calls `set_epoch` every epoch; under DDP it replaces any
    `RandomSampler` with a `DistributedSampler` seeded the same way (the training seed, `PL_GLOBAL_SEED`).
    """

    def __init__(self, data_source: Any, seed: int | None = None):
        super().__init__(data_source)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()
