"""Where runs execute: here, one after another (default) or `workers` at a time.

Parallel runs share the CPU: each gets `cores // workers` threads (OMP_NUM_THREADS, MKL_NUM_THREADS,
which torch reads at start) instead of every run assuming all of them; with several GPUs and no
CUDA_VISIBLE_DEVICES set, worker slot i gets GPU i mod count.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Protocol

from experiments.ablation.execute import Outcome, Processes, execute
from experiments.ablation.progress import Display
from experiments.ablation.runs import RunSpec

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class Executor(Protocol):
    def run(self, specs: Sequence[RunSpec], display: Display) -> dict[str, Outcome]:
        """Outcome per run digest; raises KeyboardInterrupt after stopping its runs on Ctrl-C."""
        ...


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_env(workers: int, slot: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if workers > 1:
        threads = str(max(1, available_cores() // workers))
        env.update({name: threads for name in THREAD_VARIABLES})
        gpus = 0 if "CUDA_VISIBLE_DEVICES" in env else gpu_count()
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    return env


class LocalExecutor:
    def __init__(self, program: Sequence[str], workers: int = 1, retries: int = 1, timeout: float | None = None):
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        self.program, self.workers, self.retries, self.timeout = list(program), workers, retries, timeout

    def run(self, specs: Sequence[RunSpec], display: Display) -> dict[str, Outcome]:
        processes = Processes()
        slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            slots.put(slot)

        def one(spec: RunSpec) -> Outcome:
            slot = slots.get()
            try:
                env = worker_env(self.workers, slot)
                outcome = execute(spec, self.program, self.retries, env, processes, self.timeout, display.started)
            except Exception as error:  # e.g. a full disk: this run fails, the others go on
                outcome = Outcome("failed", error=f"{type(error).__name__}: {error}")
            finally:
                slots.put(slot)
            display.finished(spec, outcome)
            return outcome

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="run")
        futures: dict[Future[Outcome], RunSpec] = {pool.submit(one, spec): spec for spec in specs}
        try:
            pending = set(futures)
            while pending:  # short waits, so Ctrl-C reaches this (main) thread promptly
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            processes.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return {futures[future].digest: future.result() for future in futures}
