"""`make bench`: every ratio benchmark, one after the other, into BENCHMARKS.md (machine, versions, command,
one table). Benchmarks on real data take its location from the options (default: the offline copies in
../shared); one whose data is missing is listed as skipped, with the reason.

    python benchmarks/run_all.py [--cifar PATH] [--glue PATH] [--teacher-weights FILE] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import adapters
import compile as compile_benchmark
import cpu_precision
import distillation
import dynamic_padding
import feature_cache
import framework_overhead
import input_pipeline
import onnx_inference
from harness import Comparison, machine, table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def plan(args: argparse.Namespace) -> list[tuple[str, Path | None, Callable[[], list[Comparison]]]]:
    """(benchmark, the data it needs or None, how to run it) in the issue's order."""
    rounds = str(args.rounds)
    cifar, glue, teacher = str(args.cifar), str(args.glue), str(args.teacher_weights)
    return [
        ("1 framework overhead", None, lambda: framework_overhead.run(args.rounds)),
        (
            "2 feature cache",
            args.cifar,
            lambda: feature_cache.run(feature_cache.parser().parse_args(["--data-root", cifar, "--rounds", rounds])),
        ),
        (
            "3 distillation cache",
            args.teacher_weights,
            lambda: distillation.run(
                distillation.parser().parse_args(
                    ["--data-root", cifar, "--teacher-weights", teacher, "--rounds", rounds, "--workers", "0"]
                )
            ),
        ),
        ("4 bf16 and channels_last", None, lambda: cpu_precision.run(args.rounds)),
        (
            "5 input pipeline",
            args.cifar,
            lambda: input_pipeline.run(input_pipeline.parser().parse_args(["--data-root", cifar, "--rounds", rounds])),
        ),
        (
            "6 dynamic padding",
            args.glue,
            lambda: dynamic_padding.run(dynamic_padding.parser().parse_args(["--glue-root", glue, "--rounds", rounds])),
        ),
        ("7 torch.compile", None, lambda: compile_benchmark.run(args.rounds)),
        ("8 adapters", None, lambda: adapters.run(args.rounds)),
        ("9 ONNX inference", None, lambda: onnx_inference.run(args.rounds)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, default=SHARED / "data" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--glue", type=Path, default=SHARED / "data" / "glue")
    parser.add_argument(
        "--teacher-weights", type=Path, default=SHARED / "weights" / "cifar10-resnet" / "resnet56-4bfd9763.th"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="benchmark numbers to run (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    comparisons: list[Comparison] = []
    lines = []
    started = time.perf_counter()
    for name, needs, run in plan(args):
        if args.only and name.split()[0] not in args.only:
            continue
        missing = [path for path in (needs, args.cifar if name.startswith("3") else None) if path and not path.exists()]
        if missing:
            lines.append(f"- {name}: skipped, {missing[0]} not found")
            continue
        print(f"== {name}", flush=True)
        measured = run()
        comparisons += measured
        print(table(measured), flush=True)
    command = shlex.join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
    minutes = (time.perf_counter() - started) / 60
    args.out.write_text(
        "# Benchmarks\n\n"
        "Ratios between two ways of doing the same work, measured in one run: interleaved rounds, the median "
        "and the min of the per-round speed-ups (time of A / time of B), and the drift of a calibration matmul "
        "timed before and after each benchmark (how much the machine's own speed changed meanwhile).\n\n"
        f"- Machine: {machine()}\n"
        f"- Date: {datetime.date.today().isoformat()}; the benchmarks took {minutes:.0f} min\n"
        f"- Command: `{command}` (`make bench` runs it with the defaults)\n\n"
        + table(comparisons)
        + ("\n\n" + "\n".join(lines) if lines else "")
        + "\n"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
