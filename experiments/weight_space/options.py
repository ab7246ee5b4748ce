"""The arguments the weight-space commands share: the config that builds model and data, and the metric."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.ablate import _key_value
from experiments.ablation.study import fit_arguments


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    config = "config file(s) of the runs, as for `transfer test` (the data and model they used)"
    parser.add_argument("-c", "--config", dest="configs", type=Path, action="append", required=True, help=config)
    key = "a config key, as `transfer test --KEY VALUE` (e.g. data.init_args.corruptions=[common])"
    parser.add_argument(
        "--set", dest="sets", type=_key_value, action="append", default=[], metavar="KEY=VALUE", help=key
    )
    parser.add_argument("--metric", default="val/score", help="validation metric that chooses (default val/score)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoints, results and plot")


def config_arguments(options: argparse.Namespace) -> list[str]:
    """The config as `transfer test` takes it; what the CLI writes of its own (its config, the run's metadata)
    goes into `--out`, not the working directory."""
    return fit_arguments(options.configs, [*options.sets, ("trainer.default_root_dir", str(options.out))])
