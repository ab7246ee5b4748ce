"""How the benchmarks compare ways of doing the same work on a noisy machine.

The ways run in interleaved rounds (the order rotates and reverses from round to round, so a drift in
machine speed hits all alike); each round gives one time per way, and each pair of ways one ratio per
round. A comparison reports the median and the min of those paired ratios, as the speed-up of B over A
(time of A / time of B: above 1, B is faster). A fixed matmul is timed before and after: the drift
column says how much the machine's own speed changed meanwhile.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch


def seconds_per_call(step: Callable[[], object], calls: int = 1, warmup: int = 0) -> float:
    """Mean seconds of `calls` calls of `step`, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - started) / calls


def calibrate(size: int = 512, repeats: int = 20) -> float:
    """Milliseconds of one fp32 `size` x `size` matmul (median of 5 timings of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        timings.append((time.perf_counter() - started) / repeats * 1e3)
    return statistics.median(timings)


@dataclass
class Samples:
    """Seconds per round of each way, and the calibration matmul (ms) before and after."""

    seconds: dict[str, list[float]]
    calibration_ms: tuple[float, float]

    @property
    def drift(self) -> float:
        before, after = self.calibration_ms
        return after / before - 1.0


def measure(ways: Mapping[str, Callable[[], float | dict[str, float]]], rounds: int = 5) -> Samples:
    """Call each way once per round, in an order that rotates and reverses. A way returns its seconds, or
    several named timings of one call ({"epoch": ..., "total": ...} is kept as "<way> epoch", "<way> total")."""
    names = list(ways)
    seconds: dict[str, list[float]] = {}
    before = calibrate()
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order if round_ % 2 == 0 else reversed(order):
            timed = ways[name]()
            for part, value in timed.items() if isinstance(timed, dict) else [("", timed)]:
                seconds.setdefault(f"{name} {part}".strip(), []).append(value)
    return Samples(seconds, (before, calibrate()))


@dataclass
class Comparison:
    """B against A over the same rounds: speed-up = seconds of A / seconds of B, per round."""

    name: str
    a_label: str
    b_label: str
    samples: Samples
    target: str = ""
    passed: bool | None = None
    note: str = ""
    unit_scale: float = 1.0  # seconds -> the unit shown (1e3: ms)
    unit: str = "s"

    @property
    def a(self) -> list[float]:
        return self.samples.seconds[self.a_label]

    @property
    def b(self) -> list[float]:
        return self.samples.seconds[self.b_label]

    @property
    def speedups(self) -> list[float]:
        return [a / b for a, b in zip(self.a, self.b, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.speedups)

    @property
    def min(self) -> float:
        return min(self.speedups)

    def judge(self, target: str, passed: bool | None, note: str = "") -> Comparison:
        self.target, self.passed, self.note = target, passed, note
        return self


def compare(
    name: str, a_label: str, a: Callable[[], float], b_label: str, b: Callable[[], float], rounds: int = 5
) -> Comparison:
    return Comparison(name, a_label, b_label, measure({a_label: a, b_label: b}, rounds))


def machine() -> str:
    """One line: CPU model, its bf16 instructions, threads, versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), model)
    except OSError:
        pass
    import lightning

    from experiments.trainer import cpu_has_bf16

    bf16 = "bf16 instructions" if cpu_has_bf16() else "no bf16 instructions"
    return (
        f"{model} ({bf16}), {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}"
    )


HEADER = (
    "| benchmark | A (median) | B (median) | speed-up of B, median | min | rounds | machine drift | target | |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def table(comparisons: Sequence[Comparison]) -> str:
    lines = [HEADER]
    for c in comparisons:
        verdict = "" if c.passed is None else ("met" if c.passed else "**not met**")
        a, b = (statistics.median(v) * c.unit_scale for v in (c.a, c.b))
        lines.append(
            f"| {c.name} | {c.a_label}: {a:.4g} {c.unit} | {c.b_label}: {b:.4g} {c.unit} | {c.median:.3g}x "
            f"| {c.min:.3g}x | {len(c.a)} | {c.samples.drift:+.0%} | {c.target} | {verdict} |"
        )
    notes = [f"- {c.name}: {c.note}" for c in comparisons if c.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def report(comparisons: Sequence[Comparison]) -> None:
    """What a benchmark run alone prints: the machine, then its table."""
    print(machine())
    print(table(comparisons))
