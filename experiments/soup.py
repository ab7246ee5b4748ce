"""`transfer soup CKPT... -c CONFIG`: model soups, the weights of several fine-tuned runs averaged.

Wortsman et al., "Model soups" (ICML 2022): runs fine-tuned from the same pretrained model with different
hyper-parameters (a study's arms, a search's trials) averaged in weight space. The uniform soup averages
all; the greedy soup adds them best first (by the validation metric) while validation does not get worse.
Every ingredient and both soups are evaluated on validation, the clean test split and, with
`data.init_args.corruptions`, the shift sets; both soups are written as checkpoints.

    transfer soup runs/studies/lrs/runs/*/checkpoints/epoch*.ckpt -c experiments/configs/cifar10/fine_tuning.yaml \\
        --set data.init_args.root=cifar10-jpeg.tar.gz --out runs/soup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.weight_space.options import add_config_arguments, config_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="transfer soup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkpoints", type=Path, nargs="+", help="fine-tuned checkpoints of one architecture")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if len(set(options.checkpoints)) < 2:
        parser.error("a soup needs at least two different checkpoints")
    from experiments.weight_space.evaluate import Evaluator, read_weights, write_weights
    from experiments.weight_space.report import write_report
    from lightning_modules.weight_space import average, check_compatible, greedy_soup

    try:
        read = [read_weights(path) for path in options.checkpoints]
        states = [state for state, _ in read]
        check_compatible(states, [str(path) for path in options.checkpoints])
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    evaluator = Evaluator(config_arguments(options), done=options.out / "evaluations")
    rows: list[dict[str, Any]] = []
    for path, state in zip(options.checkpoints, states, strict=True):
        metrics = evaluator.evaluate(state)
        if options.metric not in metrics:
            parser.error(f"--metric {options.metric} is not among the validation metrics {sorted(metrics)}")
        rows.append({"name": f"`{path}`", "metrics": metrics})
        print(f"{path}: {options.metric} {metrics[options.metric]:.4f}", flush=True)
    scores = [row["metrics"][options.metric] for row in rows]
    greedy, members = greedy_soup(states, scores, lambda s: evaluator.evaluate(s, test=False)[options.metric])
    everyone = list(range(len(states)))
    uniform = average(states)
    uniform_metrics = evaluator.evaluate(uniform)
    # A greedy soup of one ingredient is that ingredient, of all of them the uniform soup: scored already.
    known = {(members[0],): rows[members[0]]["metrics"], tuple(everyone): uniform_metrics}
    template = read[members[0]][1]
    for name, soup, used in (("uniform_soup", uniform, everyone), ("greedy_soup", greedy, members)):
        ingredients = [str(options.checkpoints[i]) for i in used]
        write_weights(soup, template, options.out / f"{name}.ckpt", {"soup": name, "ingredients": ingredients})
        metrics = known.get(tuple(sorted(used))) or evaluator.evaluate(soup)
        rows.append({"name": f"{name} ({len(used)} of {len(states)})", "metrics": metrics})
    order = ", ".join(f"`{options.checkpoints[i]}`" for i in members)
    notes = [f"greedy soup ingredients, in the order they joined (best {options.metric} first): {order}",
             "checkpoints: `uniform_soup.ckpt`, `greedy_soup.ckpt`"]  # fmt: skip
    made = {name: row["name"] for name, row in zip(("uniform_soup", "greedy_soup"), rows[-2:], strict=True)}
    report = write_report(options.out, "Model soups", rows, options.metric, notes, made)
    print(f"greedy soup of {len(members)} / {len(states)}; {report} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
