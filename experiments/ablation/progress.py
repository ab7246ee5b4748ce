"""The live view of a study: runs done / failed / remaining, each running run's epoch, and an ETA.

In a terminal a rich Live panel redraws twice a second above one printed line per event; elsewhere
(a log file, CI) only the event lines appear. Executors call `started` and `finished` from any thread.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from experiments.ablation.execute import Outcome
from experiments.ablation.runs import RunSpec, read_progress


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Display:
    def __init__(
        self,
        study: str,
        total: int,
        workers: int = 1,
        console: Console | None = None,
        metrics: Sequence[str] = (),
    ):
        self.console = console or Console(highlight=False)
        self.metrics = list(metrics)  # shown when a run finishes; default: its test metrics
        self.study, self.total, self.workers = study, total, workers
        self.done = self.failed = self.earlier = 0
        self._durations: list[float] = []
        self._earlier_durations: list[float] = []
        self._active: dict[str, tuple[RunSpec, int, float]] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=2, transient=True)
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()

    def print(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)  # a log file gets whole lines

    def finished_earlier(self, spec: RunSpec, outcome: Outcome) -> None:
        with self._lock:
            self.earlier += 1
            self._earlier_durations.append(outcome.seconds)

    def started(self, spec: RunSpec, attempt: int, checkpoint: Path | None) -> None:
        with self._lock:
            self._active[spec.digest] = (spec, attempt, time.monotonic())
        how = f", resuming from {checkpoint.name}" if checkpoint else ""
        self.print(f"[cyan]start[/] {escape(spec.label)} (try {attempt}{how}): {spec.directory}")

    def finished(self, spec: RunSpec, outcome: Outcome) -> None:
        with self._lock:
            self._active.pop(spec.digest, None)
            if outcome.status == "done":
                self.done += 1
                self._durations.append(outcome.seconds)
            elif outcome.status == "failed":
                self.failed += 1
        if outcome.status == "done":
            names = self.metrics or [k for k in outcome.metrics if k.startswith("test/")]
            shown = ", ".join(f"{k} {outcome.metrics[k]:.4g}" for k in names if k in outcome.metrics)
            self.print(f"[green]done[/] {escape(spec.label)} in {duration(outcome.seconds)}: {escape(shown)}")
        elif outcome.status == "failed":
            self.print(
                f"[red]failed[/] {escape(spec.label)} after {outcome.attempts} tries: {escape(outcome.error or '')}"
            )

    def eta(self) -> float | None:
        """Remaining runs x mean run time (this invocation's, else earlier ones') / workers."""
        known = self._durations or self._earlier_durations
        if not known:
            return None
        mean = statistics.fmean(known)
        remaining = self.total - self.done - self.failed - self.earlier - len(self._active)
        active = 0.0  # what is left of the running runs: by epochs where known, else by time
        for spec, _, started in self._active.values():
            progress = read_progress(spec.directory) or {}
            if (progress.get("max_epochs") or 0) > 0:
                active += 1.0 - progress["epoch"] / progress["max_epochs"]
            else:
                active += max(0.0, 1.0 - (time.monotonic() - started) / mean)
        return mean * (remaining + active) / max(1, self.workers)

    def render(self) -> RenderableType:
        with self._lock:
            settled = self.done + self.failed + self.earlier
            eta = self.eta()
            head = Table.grid(padding=(0, 1))
            head.add_row(
                Text(self.study, style="bold"),
                ProgressBar(total=self.total, completed=settled, width=30),
                Text(
                    f"{settled}/{self.total} · {self.done} done · {self.failed} failed · {self.earlier} earlier · "
                    f"{self.total - settled} to go · ETA {duration(eta) if eta is not None else '?'}"
                ),
            )
            lines: list[RenderableType] = [head]
            for spec, attempt, started in self._active.values():
                progress = read_progress(spec.directory)
                total = progress and progress.get("max_epochs")
                epoch = (
                    f"epoch {progress['epoch'] + 1}/{total if total and total > 0 else '?'}" if progress else "starting"
                )
                lines.append(
                    Text(f"  ▸ {spec.label} · try {attempt} · {epoch} · {duration(time.monotonic() - started)}")
                )
            return Group(*lines)
