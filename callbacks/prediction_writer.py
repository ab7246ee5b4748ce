"""`transfer predict` writes one TSV per prediction set: `index` and `prediction` columns, as GLUE wants.

The datamodule says how files are named (`prediction_names`, e.g. GLUE's `RTE`, `MNLI-m`, `MNLI-mm`),
which strings the classes are written as (`label_names`, else `class_names`, else the class id) and
the range regression predictions are clipped to (`label_range`, STS-B 0-5). Rows carry the batch's
`index` (GLUE's test ids, unique: the datamodule refuses a file that repeats one); under DDP the ranks' rows are
gathered on rank 0 and the ids the distributed sampler repeats are dropped. SIGTERM stops prediction after the
batch in progress and keeps the rows done (`on_exception`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from datamodules.cache import write_atomically


class PredictionWriter(BasePredictionWriter):
    """Collect `predict_step` outputs with their `index` (Lightning's prediction writer, each batch) and write
    `<output_dir>/<name>.tsv` files at the end.

    Args:
        output_dir: Folder of the prediction files; None: `predictions/` in the trainer's log directory.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._rows: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = {}

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(batch, dict) or "index" not in batch:
            raise ValueError("PredictionWriter needs batches with an `index` entry (every datamodule here has one)")
        self._rows.setdefault(dataloader_idx, []).append((batch["index"].detach(), prediction.detach()))
        if trainer.received_sigterm:  # Lightning's predict loop, unlike its others, does not stop on SIGTERM
            raise SIGTERMException

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, partial=False)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Pre-empted (SIGTERM): the rows predicted so far go to `<name>.partial.tsv` (each rank its own: no
        collective after a signal), never under the final name; the process exits 143 (`CheckpointOnSigterm`)."""
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.PREDICTING and self._rows:
            self._write(trainer, pl_module, partial=True)

    def _write(self, trainer: Trainer, pl_module: LightningModule, partial: bool) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        names = list(getattr(datamodule, "prediction_names", None) or [])
        folder = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")
        for loader, rows in sorted(self._rows.items()):
            index = torch.cat([i for i, _ in rows])
            outputs = torch.cat([o for _, o in rows])
            if trainer.world_size > 1 and not partial:
                index, outputs = _gather(pl_module, index), _gather(pl_module, outputs)
            if not trainer.is_global_zero and not partial:
                continue
            index, first = _unique_sorted(index.cpu())
            name = names[loader] if loader < len(names) else f"predictions_{loader}" if loader else "predictions"
            if partial:
                name += f".rank{trainer.global_rank}.partial" if trainer.world_size > 1 else ".partial"
            path = folder / f"{name}.tsv"
            _write_tsv(path, index, format_predictions(outputs.cpu()[first], datamodule))
            if partial:
                print(f"SIGTERM: predictions stopped; the {len(index)} rows done are in {path}", file=sys.stderr)
            else:
                rank_zero_info(f"predictions: {len(index)} rows written to {path}")
        self._rows = {}


def _gather(pl_module: LightningModule, rows: Tensor) -> Tensor:
    """Every rank's rows, concatenated in rank order. Lightning's predict sampler does not pad, so ranks
    may hold different numbers of rows: pad to the longest, gather, then drop the padding."""
    sizes = pl_module.all_gather(torch.tensor(len(rows), device=rows.device))
    assert isinstance(sizes, Tensor)
    counts = sizes.tolist()
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    gathered = pl_module.all_gather(padded)
    assert isinstance(gathered, Tensor)
    return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)])


def _unique_sorted(index: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique ids and, for each, the position of its first occurrence (padding rows repeat ids)."""
    unique, inverse = torch.unique(index, sorted=True, return_inverse=True)
    positions = torch.arange(len(index))
    first = torch.full((len(unique),), len(index), dtype=torch.int64).scatter_reduce(
        0, inverse, positions, reduce="amin"
    )
    return unique, first


def format_predictions(outputs: Tensor, datamodule: Any) -> list[str]:
    """Class probabilities -> label strings; regression outputs -> scores clipped to `label_range`."""
    if outputs.ndim == 1:
        low, high = getattr(datamodule, "label_range", None) or (-float("inf"), float("inf"))
        return [f"{value:.4f}" for value in outputs.float().clamp(low, high).tolist()]
    labels = getattr(datamodule, "label_names", None) or getattr(datamodule, "class_names", None)
    classes = outputs.argmax(-1).tolist()
    return [labels[c] if labels else str(c) for c in classes]


def _write_tsv(path: Path, index: Tensor, predictions: list[str]) -> None:
    lines = ["index\tprediction", *(f"{i}\t{p}" for i, p in zip(index.tolist(), predictions, strict=True))]
    # Atomic: a half-written submission file never exists under its name.
    write_atomically(path, lambda handle: handle.write(("\n".join(lines) + "\n").encode()))
