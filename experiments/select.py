"""`transfer select`: rank candidate pretrained models on your data by transferability scores, in minutes.

One forward pass per candidate over the un-augmented training split (through the feature cache, so a second
call is nearly free), then the scores of `lightning_modules.transferability` (LogME, LEEP, NCE, H-score, and
the empirical k-NN and cross-validated linear-probe accuracies). The data is any `transfer fit` config's
`data` section; each candidate gets its own preprocessing, as `transfer fit --model.backbone` would.

    transfer select experiments/selections/digits.yaml
    transfer select -c experiments/configs/digits/fine_tuning.yaml --candidates efficientnet_lite0 cifar_resnet56
    transfer select SELECTION.yaml --set data.init_args.root=PATH --scores logme linear_probe --out runs/select/x
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from experiments.ablate import _key_value
from experiments.ablation.study import cli_value
from experiments.selection.candidates import parse_candidates
from experiments.selection.spec import DEFAULT_RANK_BY, Selection, check_scores, load_selection


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="transfer select",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("selection", type=Path, nargs="?", help="a selection file (experiments/selections/*.yaml)")
    parser.add_argument("-c", "--config", dest="configs", type=Path, action="append", default=[], metavar="FILE",
                        help="a config piece whose `data` is the target (after the selection file's)")  # fmt: skip
    parser.add_argument("--set", dest="sets", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="a config key, as `transfer fit --KEY VALUE` (e.g. data.init_args.root=...)")  # fmt: skip
    parser.add_argument("--candidates", nargs="+", metavar="BACKBONE", help="backbone names (replace the file's)")
    parser.add_argument("--scores", nargs="+", metavar="SCORE", help="scores to compute (default: all that apply)")
    parser.add_argument("--rank-by", help=f"the score that orders the table (default {DEFAULT_RANK_BY})")
    parser.add_argument("--out", type=Path, help="folder of results.{md,csv,json} (default runs/select/<name>)")
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default $TRANSFER_CACHE_DIR/features)")
    parser.add_argument("--no-cache", action="store_true", help="compute every candidate's features afresh")
    parser.add_argument("--device", default=None, help="torch device for the forward passes (default cuda if any)")
    parser.add_argument("--seed", type=int, default=0, help="seed of randomly initialised candidates (default 0)")
    return parser


def selection_from(options: argparse.Namespace, parser: argparse.ArgumentParser) -> Selection:
    selection = load_selection(options.selection) if options.selection else Selection(name="select")
    selection.configs += tuple(options.configs)
    selection.overrides += tuple(options.sets)
    if options.candidates:
        selection.candidates = parse_candidates(options.candidates, "--candidates")
    if options.scores:
        selection.scores = options.scores
    selection.rank_by = options.rank_by or (
        selection.rank_by if options.selection or not options.scores else options.scores[0]
    )
    if not selection.configs:
        parser.error("give a selection file or the data's config with -c")
    if not selection.candidates:
        parser.error("no candidates: give them in the selection file or with --candidates")
    check_scores(selection.scores, selection.rank_by, "--scores/--rank-by")
    return selection


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    options = parser.parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        selection = selection_from(options, parser)
    except ValueError as error:
        print(f"transfer select: error: {error}", file=sys.stderr)
        return 2
    # Lightning, torch and the backbones load only once the cheap checks have passed.
    import torch

    from datamodules.cache import cache_root
    from experiments.ablation.plan import ConfigError, resolve
    from experiments.selection.report import log_wandb_table, write_results
    from experiments.selection.run import build_datamodule, data_key, encode, is_regression, score, target_data

    base = [arg for path in selection.configs for arg in ("-c", str(path))]
    keys = [arg for key, value in selection.overrides for arg in (f"--{key}", cli_value(value))]
    resolved = {}
    for candidate in selection.candidates:  # every candidate checked by the real parser before any work
        try:
            resolved[candidate.name] = resolve([*base, *candidate.model_args(), *keys])[0]
        except ConfigError as error:
            print(f"transfer select: error: candidate {candidate.name}: {error}", file=sys.stderr)
            return 2
    out = options.out or Path("runs") / "select" / selection.name
    cache_dir = None if options.no_cache else options.cache_dir or cache_root() / "features"
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started, results, datamodules = time.perf_counter(), [], {}
    for candidate in selection.candidates:
        data = target_data(resolved[candidate.name])
        try:
            if data_key(data) not in datamodules:  # candidates with the same preprocessing share the data
                datamodules[data_key(data)] = build_datamodule(data)
            datamodule = datamodules[data_key(data)]
            encoded = encode(candidate, datamodule, cache_dir, device, options.seed)
            result = score(candidate, encoded, selection.scores, is_regression(datamodule))
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            print(f"transfer select: error: candidate {candidate.name}: {error}", file=sys.stderr)
            return 2
        results.append(result)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.scores.items())
        source = "cache" if result.cached else f"{result.rows} rows"
        console.print(f"{candidate.name}: {shown} ({result.feature_seconds:.1f} s features from {source})")
    header = {
        "name": selection.name,
        "description": selection.description,
        "command": shlex.join(["transfer", "select", *argv]),
        "data": f"`{data['class_path']}`, training split of {results[0].rows} rows (un-augmented)",
        "wall time": f"{time.perf_counter() - started:.1f} s",
    }
    paths = write_results(results, selection.rank_by, out, header)
    console.print(paths["md"].read_text(), markup=False)
    logger = (resolved[selection.candidates[0].name].get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and logger.get("class_path") == "experiments.tracking.WandbLogger":
        project = (logger.get("init_args") or {}).get("project", "transfer")
        console.print(log_wandb_table(results, selection.rank_by, selection.name, project, out))
    console.print(f"results in {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
