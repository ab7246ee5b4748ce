"""`transfer wise-ft START END -c CONFIG`: WiSE-FT, the weights of two runs interpolated and chosen on validation.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): `(1 - alpha) * START + alpha * END`
for each alpha, where START is the model before fine-tuning (zero-shot, or a linear probe on the frozen
backbone) and END the fine-tuned one, of the same architecture. Each mix is evaluated on the validation
split, the clean test split and, with `data.init_args.corruptions`, the shift sets; the alpha with the best
validation metric is written as a checkpoint that `transfer test --ckpt_path` reads.

    transfer wise-ft probe/last.ckpt lp_ft/last.ckpt -c experiments/configs/cifar10/fine_tuning.yaml \\
        --set data.init_args.corruptions=[common] --out runs/wise_ft
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.weight_space.options import add_config_arguments, config_arguments

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="transfer wise-ft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("start", type=Path, help="checkpoint before fine-tuning (zero-shot or linear probe)")
    parser.add_argument("end", type=Path, help="the fine-tuned checkpoint (same architecture)")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="mixing coefficients in [0, 1]")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    bad = [a for a in options.alphas if not 0.0 <= a <= 1.0]
    if bad:
        parser.error(f"--alphas must lie in [0, 1], got {bad}")
    from experiments.weight_space.evaluate import Evaluator, read_weights, write_weights
    from experiments.weight_space.report import plot_interpolation, write_report
    from lightning_modules.weight_space import check_compatible, interpolate

    try:
        (start, _), (end, template) = read_weights(options.start), read_weights(options.end)
        check_compatible([start, end], [str(options.start), str(options.end)])
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    evaluator = Evaluator(config_arguments(options), done=options.out / "evaluations")
    rows: list[dict[str, Any]] = []
    for alpha in sorted(set(options.alphas)):
        metrics = evaluator.evaluate(interpolate(start, end, alpha))
        if options.metric not in metrics:
            parser.error(f"--metric {options.metric} is not among the validation metrics {sorted(metrics)}")
        rows.append({"name": f"alpha {alpha:g}", "alpha": alpha, "metrics": metrics})
        print(f"alpha {alpha:g}: {options.metric} {metrics[options.metric]:.4f}", flush=True)
    chosen = max(rows, key=lambda row: row["metrics"][options.metric])["alpha"]
    made_from = {"start": str(options.start), "end": str(options.end), "alpha": chosen}
    checkpoint = write_weights(interpolate(start, end, chosen), template, options.out / "wise_ft.ckpt", made_from)
    notes = [f"start: `{options.start}`; end: `{options.end}`",
             f"chosen alpha {chosen:g} (best {options.metric}); its weights: `{checkpoint.name}`"]  # fmt: skip
    report = write_report(options.out, "WiSE-FT", rows, options.metric, notes, {"wise_ft": f"alpha {chosen:g}"})
    plot_interpolation(rows, options.metric, chosen, options.out / "wise_ft.png")
    print(f"alpha {chosen:g} chosen on {options.metric}; {report} and {checkpoint} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
