"""A callback the reliability tests inject by class path (`--trainer.callbacks+ reliability_probes.Probe`):
it records every training step (of any strategy) and can interrupt or break a run at a chosen step."""

import json
import os
import signal
import time
from pathlib import Path

import torch
from lightning import Callback


class Probe(Callback):
    """Appends one JSON line per training step to `<directory>/steps_rank<r>.jsonl`: the global step, the
    batch's sample indices, the loss and the sum of all parameters (after the step).

    Args:
        directory: Where the step files go.
        sigterm_at: After this global step, send SIGTERM to this process.
        fail_at: After this global step, raise RuntimeError in rank `fail_rank`.
        fail_rank: The rank that fails.
        sleep: Seconds to sleep after each step (gives an outside kill time to land mid-run).
    """

    def __init__(
        self,
        directory: str,
        sigterm_at: int | None = None,
        fail_at: int | None = None,
        fail_rank: int = 0,
        sleep: float = 0.0,
    ):
        self.directory = Path(directory)
        self.sigterm_at = sigterm_at
        self.fail_at = fail_at
        self.fail_rank = fail_rank
        self.sleep = sleep

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        with torch.no_grad():
            total = sum(p.detach().double().sum() for p in pl_module.parameters()).item()
        record = {
            "step": step,
            "epoch": trainer.current_epoch,
            "index": sample_indices(batch),
            "loss": float(outputs["loss"]) if outputs else None,  # None: a manual step (gradient weightings)
            "param_sum": total,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"steps_rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")
        if self.sleep:
            time.sleep(self.sleep)
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step == self.fail_at and trainer.global_rank == self.fail_rank:
            (self.directory / "failed_at").write_text(str(time.time()))
            raise RuntimeError(f"probe failure in rank {self.fail_rank} at step {step}")


def sample_indices(batch):
    """The batch's sample indices; a multi-task batch's per task."""
    if "index" in batch:
        return batch["index"].tolist()
    return {task: part["index"].tolist() for task, part in batch.items()}


def read_steps(directory, rank=0):
    path = Path(directory) / f"steps_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class SigtermAtBatch(Callback):
    """Sends SIGTERM to this process after evaluation or prediction batch `batch` (a scheduler's pre-emption)."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)

    on_predict_batch_end = on_test_batch_end
