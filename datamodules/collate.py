"""Batching for text: padding per batch, and training order grouped by length.

Sequences are stored unpadded; a batch is padded to its own longest sequence (or to a fixed width), so
short-sentence tasks such as SST-2 do not pay for `max_length` columns of padding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from datamodules.samplers import Resumable


def longest_first_batches(rows: np.ndarray, row_lengths: np.ndarray, width: int) -> list[np.ndarray]:
    """`rows` sorted by `row_lengths` (their lengths, one per row), longest first, equal lengths in their given
    order, and cut into batches of `width` rows (the last one may be short): the length grouping of one chunk,
    shared by `LengthGroupedSampler` and the multi-task `TaskSchedule`; each draws its own batch order."""
    ordered = rows[np.argsort(-row_lengths, kind="stable")]
    return np.split(ordered, range(width, len(ordered), width))


class PadCollator:
    """Pads `{"input_ids", ["token_type_ids"], "labels", "index"}` items into one batch dict (and the
    `pair_` fields of sentence pairs encoded apart).

    Args:
        pad_token_id: The tokenizer's padding id.
        pad_token_type_id: Segment id of padding positions.
        pad_to: Fixed width of every batch; None pads to the longest sequence in the batch.
        padding_side: "right" (BERT-style encoders) or "left".
    """

    def __init__(
        self, pad_token_id: int, pad_token_type_id: int = 0, pad_to: int | None = None, padding_side: str = "right"
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.pad_token_type_id = pad_token_type_id
        self.pad_to = pad_to
        self.padding_side = padding_side

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = self.pad(items, "")
        if "pair_input_ids" in items[0]:  # sentence pairs encoded apart (a bi-encoder): the second sentences
            batch |= self.pad(items, "pair_")
        batch["labels"] = torch.stack([item["labels"] for item in items])
        batch["index"] = torch.stack([item["index"] for item in items])
        return batch

    def pad(self, items: list[dict[str, torch.Tensor]], prefix: str) -> dict[str, torch.Tensor]:
        """`{prefix}input_ids`, `{prefix}attention_mask` (and `{prefix}token_type_ids`) of the items, padded."""
        lengths = [len(item[f"{prefix}input_ids"]) for item in items]
        width = max(lengths, default=0) if self.pad_to is None else max(self.pad_to, *lengths)
        shape = (len(items), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros(shape, dtype=torch.int64)
        with_types = f"{prefix}token_type_ids" in items[0]
        token_type_ids = torch.full(shape, self.pad_token_type_id, dtype=torch.int64) if with_types else None
        for row, (item, n) in enumerate(zip(items, lengths, strict=True)):
            cols = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            input_ids[row, cols] = item[f"{prefix}input_ids"]
            attention_mask[row, cols] = 1
            if token_type_ids is not None:
                token_type_ids[row, cols] = item[f"{prefix}token_type_ids"]
        batch = {f"{prefix}input_ids": input_ids, f"{prefix}attention_mask": attention_mask}
        if token_type_ids is not None:
            batch[f"{prefix}token_type_ids"] = token_type_ids
        return batch


class LengthGroupedSampler(Resumable, DistributedSampler):
    """Training order whose batches hold sequences of similar length (less padding, same randomness).

    Each epoch: shuffle all rows, sort each chunk of `chunk_batches` batches by length (longest first),
    cut it into batches, then shuffle those batches; a short last batch stays last so the DataLoader's
    batching stays aligned. The order depends only on `seed + epoch` (`set_epoch`), so a resumed run
    repeats it.

    It is a `DistributedSampler` so that Lightning leaves it in place under DDP (it would otherwise wrap
    it in a sampler that reshuffles the indices): with `num_replicas` ranks, groups of `batch_size *
    num_replicas` rows are sorted together and rank r takes every r-th row of each group, so every
    rank's batch holds similar lengths too.
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        batch_size: int,
        seed: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        chunk_batches: int = 50,
    ):
        self.lengths = torch.as_tensor(lengths, dtype=torch.int64)
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        # The lengths tensor stands in for the dataset: DistributedSampler only takes its len().
        super().__init__(self.lengths, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size} and {chunk_batches}")
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches

    def __iter__(self) -> Iterator[int]:
        if len(self.lengths) == 0:
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        if self.total_size > len(order):  # pad like DistributedSampler: every rank gets as many rows
            order = np.resize(order, self.total_size)
        group = self.batch_size * self.num_replicas
        chunk = group * self.chunk_batches
        lengths = self.lengths.numpy()
        batches: list[np.ndarray] = []
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            batches.extend(longest_first_batches(rows, lengths[rows], group))
        full, short = (batches[:-1], batches[-1:]) if len(batches[-1]) < group else (batches, [])
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        stream = np.concatenate(shuffled + short)
        yield from stream[self.rank :: self.num_replicas].tolist()[self._skip() :]
