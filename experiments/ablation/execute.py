"""One run of a study: `transfer fit ... --test_after_fit true` in a subprocess, in its own folder.

The folder holds everything: `attempt-N.log` per try, `checkpoints/` (last.ckpt to resume from), the
logger's files with `results.json`, the recorder's progress and history, and `result.json`, written last
and atomically by the runner: a run is finished exactly when that file exists, and is never run again.
A failed or killed try is retried, resuming from `checkpoints/last.ckpt` when there is one; a try that
resumed and died without writing a newer checkpoint makes the next try start afresh (that checkpoint
may be what kills it), keeping it aside as `checkpoints.failed-N`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from experiments.ablation.runs import RESULT, RunSpec, read_json, write_json

Status = Literal["done", "finished earlier", "failed", "interrupted", "not run"]
KILL_GRACE_S = 30.0  # after SIGTERM, before SIGKILL


@dataclass
class Outcome:
    status: Status
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    attempts: int = 0
    log: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "finished earlier")


def finished_result(directory: Path) -> Outcome | None:
    data = read_json(directory / RESULT)
    if not isinstance(data, dict):
        return None
    return Outcome("finished earlier", data["metrics"], data["seconds"], data["attempts"], data.get("log"))


def last_checkpoint(directory: Path) -> Path | None:
    path = directory / "checkpoints" / "last.ckpt"
    return path if path.is_file() and path.stat().st_size > 0 else None


def flat_metrics(results: Mapping[str, Any], seconds: float) -> dict[str, float]:
    """results.json as one flat mapping: the test metrics, best_score, fit_seconds, epochs, wall_seconds."""
    metrics = {k: float(v) for k, v in (results.get("test") or {}).items() if isinstance(v, int | float)}
    for key in ("best_score", "fit_seconds", "epochs"):
        if isinstance(results.get(key), int | float):
            metrics[key] = float(results[key])
    metrics["wall_seconds"] = round(seconds, 2)
    return metrics


def _new_results(directory: Path, since: float) -> Path | None:
    found = [p for p in directory.rglob("results.json") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class Processes:
    """The live subprocesses of this runner, so Ctrl-C can stop them all and nothing else."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def start(self, command: list[str], log: Path, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self.stopping.is_set():
                raise InterruptedError
            with log.open("wb") as handle:
                # Own session: the terminal's Ctrl-C reaches the runner only, which stops the runs itself.
                process = subprocess.Popen(
                    command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env), start_new_session=True
                )
            self._live.add(process)
            return process

    def wait(self, process: subprocess.Popen[bytes], timeout: float | None) -> int | None:
        """The exit code; None when it ran past `timeout` seconds (it is then stopped). On Ctrl-C the
        process stays registered, for `stop_all`."""
        try:
            code: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._stop(process)
            code = None
        with self._lock:
            self._live.discard(process)
        return code

    def stop_all(self) -> None:
        self.stopping.set()
        with self._lock:
            live = list(self._live)
        for process in live:
            self._signal(process, signal.SIGTERM)  # Lightning stops at the next batch and exits
        deadline = time.monotonic() + KILL_GRACE_S
        for process in live:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        self._signal(process, signal.SIGTERM)
        try:
            process.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal(process, signal.SIGKILL)
            process.wait()

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(process.pid, sig)  # the run and its dataloader workers


def execute(
    spec: RunSpec,
    program: Sequence[str],
    retries: int = 1,
    env: Mapping[str, str] | None = None,
    processes: Processes | None = None,
    timeout: float | None = None,
    on_attempt: Callable[[RunSpec, int, Path | None], None] | None = None,
) -> Outcome:
    """Run `spec` until it finishes or `1 + retries` tries have failed; never raises for a failed run."""
    earlier = finished_result(spec.directory)
    if earlier is not None:
        return earlier
    processes = processes or Processes()
    if processes.stopping.is_set():  # Ctrl-C while runs were queued: announce and touch nothing more
        return Outcome("not run")
    spec.directory.mkdir(parents=True, exist_ok=True)
    write_json(spec.directory / "run.json", {**asdict(spec), "directory": str(spec.directory), "cwd": str(spec.cwd)})
    started = time.perf_counter()
    error, log = "", None
    for attempt in range(1, retries + 2):
        number = len(list(spec.directory.glob("attempt-*.log"))) + 1
        log = spec.directory / f"attempt-{number}.log"
        checkpoint = last_checkpoint(spec.directory)
        stamp = checkpoint.stat().st_mtime if checkpoint else None
        if on_attempt is not None:
            on_attempt(spec, number, checkpoint)
        since = time.time()
        try:
            process = processes.start(spec.command(program, checkpoint), log, spec.cwd, env or os.environ)
        except InterruptedError:
            return Outcome("interrupted", attempts=attempt - 1, log=str(log))
        try:
            code = processes.wait(process, timeout)
        except KeyboardInterrupt:  # on the main thread (a cancelled submitit job): stop the run as well
            processes.stop_all()
            raise
        if processes.stopping.is_set():
            return Outcome("interrupted", attempts=attempt, log=str(log))
        results = _new_results(spec.directory, since) if code == 0 else None
        if results is not None:
            seconds = time.perf_counter() - started
            metrics = flat_metrics(json.loads(results.read_text()), seconds)
            record = {
                "metrics": metrics,
                "seconds": round(seconds, 2),
                "attempts": attempt,
                "log": str(log),
                "results": str(results),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_json(spec.directory / RESULT, record)
            return Outcome("done", metrics, seconds, attempt, str(log))
        if code is None:
            error = f"ran past the {timeout:.0f} s timeout"
        elif code == 0:
            error = "exited 0 without writing results.json"
        else:
            error = f"exited with code {code}"
        error += f"; last lines of {log}:\n{_tail(log)}"
        if checkpoint is not None and last_checkpoint(spec.directory) and checkpoint.stat().st_mtime == stamp:
            checkpoint.parent.rename(spec.directory / f"checkpoints.failed-{number}")  # resuming did not help
    seconds = time.perf_counter() - started
    return Outcome("failed", seconds=seconds, attempts=retries + 1, log=str(log), error=error)
