"""How the benchmarks compare two ways of doing the same work on a noisy machine.

A and B run in interleaved pairs (ABBA order, so a drift in machine speed hits both alike); each pair
gives one ratio B/A; the result is the median and the min of those ratios. A fixed matmul is timed before
and after: if the machine's speed changed by more than a few per cent during the benchmark, the
calibration line says so.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


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
class Comparison:
    """`b / a` per pair of a quantity measured on both ways (seconds, samples/s, bytes...)."""

    name: str
    a_label: str
    b_label: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    unit: str = "s"
    calibration_ms: tuple[float, float] = (float("nan"), float("nan"))  # before, after

    @property
    def ratios(self) -> list[float]:
        return [b / a for a, b in zip(self.a, self.b, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def min(self) -> float:
        return min(self.ratios)

    @property
    def drift(self) -> float:
        """Relative change of the calibration matmul from before to after."""
        before, after = self.calibration_ms
        return after / before - 1.0


def compare(
    name: str, a_label: str, a: Callable[[], float], b_label: str, b: Callable[[], float], pairs: int = 5
) -> Comparison:
    """Run `a` and `b` in `pairs` interleaved pairs (ABBA); each call returns its measured quantity."""
    result = Comparison(name, a_label, b_label)
    before = calibrate()
    for pair in range(pairs):
        if pair % 2 == 0:
            result.a.append(a())
            result.b.append(b())
        else:
            result.b.append(b())
            result.a.append(a())
    result.calibration_ms = (before, calibrate())
    return result


def machine() -> str:
    """One line: CPU model, cores/threads, bf16 support, versions."""
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), model)
        flags = " ".join(flag for flag in ("avx512_bf16", "amx_bf16") if flag in text)
    except OSError:
        pass
    import lightning

    return (
        f"{model} ({flags or 'no bf16 instructions'}), {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}"
    )


def markdown_row(result: Comparison, target: str, passed: bool | None) -> str:
    verdict = "" if passed is None else ("met" if passed else "**not met**")
    a, b = statistics.median(result.a), statistics.median(result.b)
    return (
        f"| {result.name} | {result.a_label}: {a:.4g} {result.unit} | {result.b_label}: {b:.4g} {result.unit} "
        f"| {result.median:.3f} | {result.min:.3f} | {len(result.ratios)} | {result.drift:+.1%} "
        f"| {target} | {verdict} |"
    )


TABLE_HEADER = (
    "| benchmark | A (median) | B (median) | B/A median | B/A min | pairs | calibration drift | target | |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
