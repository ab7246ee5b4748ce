"""`make demo`: feature extraction vs fine-tuning vs gradual unfreezing vs training from scratch, offline.

The study `experiments/studies/demo.yaml` run through `transfer ablate` like any other study:
EfficientNet-Lite0 with the ImageNet weights its pip package ships, on scikit-learn's bundled
handwritten digits (1,797 real 8x8 images, upscaled to 64 px), two seeds per arm, each run a normal
`transfer fit ... --test_after_fit true` in its own process, W&B offline. The table goes to the
terminal and to `demo_results.md`; runs, results.{csv,json,md} and plots to `runs/demo/`. Running it
again reuses the finished runs (delete `runs/demo/` or `make clean` to start over).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from experiments import ablate

STUDY = Path(__file__).resolve().parent / "studies" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the study's (0 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--report", type=Path, default=Path("demo_results.md"))
    options = parser.parse_args()

    args = [os.path.relpath(STUDY), "--out", str(options.out)]
    code = ablate.main(args + (["--seeds", *map(str, options.seeds)] if options.seeds else []))
    results = options.out / "results.md"
    if results.is_file():  # the same report, its plot links made relative to where it is copied
        link = Path(os.path.relpath(options.out.absolute(), options.report.absolute().parent)).as_posix()
        options.report.write_text(results.read_text().replace("](plots/", f"]({link}/plots/"))
        print(f"report: {options.report} (and {results})")
    sys.exit(code)


if __name__ == "__main__":
    main()
