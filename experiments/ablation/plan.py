"""Arms resolved by the real `transfer` parser into runs (nothing instantiated, no data or weights read).

Each run gets a folder named by a hash of its resolved config and seed, so the same config and seed
always land in the same folder (that is how a finished run is found again) and anything that changes
the run lands elsewhere. Keys that only say where things go or how they are shown (`NOT_HASHED`) are
left out of the hash, and so are values equal to the parser's defaults, the init arguments of every
`class_path` included, so that a new argument with a default (or a new Trainer flag) does not orphan
finished runs.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from experiments.ablation.runs import RunSpec
from experiments.ablation.study import Arm, Study
from experiments.cli import TransferCLI

NOT_HASHED = (
    "seed_everything",  # hashed on its own, beside the config
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "checkpoint.dirpath",
    "data.init_args.root",
    "data.init_args.download",
    "data.init_args.num_workers",
    "data.init_args.cache_dir",
    "model.init_args.feature_cache_dir",
    "run_metadata",
    "predictions",
    "test_after_fit",
)
RECORDER = "experiments.ablation.recorder.RunRecorder"
WANDB_LOGGER = "experiments.tracking.WandbLogger"


class ConfigError(ValueError):
    """Arguments the `transfer` parser rejects; the message is the parser's (it names the key)."""


@dataclass(frozen=True)
class ArmPlan:
    arm: Arm
    config_args: tuple[str, ...]
    resolved: dict[str, Any]  # the full resolved config, seed aside
    runs: tuple[RunSpec, ...]

    @property
    def monitor(self) -> str | None:
        return (self.resolved.get("checkpoint") or {}).get("monitor")

    @property
    def logger_class(self) -> str | None:
        logger = (self.resolved.get("trainer") or {}).get("logger")
        return logger.get("class_path") if isinstance(logger, dict) else None


class _ParserOnly(TransferCLI):
    """TransferCLI's parser, built without parsing sys.argv, seeding or instantiating anything."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = Namespace(seed_everything=False)

    def instantiate_classes(self) -> None:
        pass


@functools.cache
def config_parser() -> LightningArgumentParser:
    parser = _ParserOnly(run=False).parser
    parser.exit_on_error = False  # raise ArgumentError instead of printing usage and exiting
    return parser


def resolve(args: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full resolved config, the part that is hashed) of `transfer fit` arguments."""
    parser = config_parser()
    try:
        config = parser.parse_args(list(args))
    except (argparse.ArgumentError, ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
    except SystemExit as error:  # a config file that cannot be read exits even so
        raise ConfigError(f"the parser exited ({error.code}) on: {' '.join(args)}") from None
    full = yaml.safe_load(parser.dump(config, skip_check=True))
    hashed = _without_defaults(json.loads(parser.dump(config, skip_check=True, skip_default=True, format="json")))
    for key in NOT_HASHED:
        _drop(hashed, key.split("."))
    return full, hashed


def _without_defaults(node: Any) -> Any:
    """The dumped config less the init arguments equal to their class's defaults, at any depth (the parser's
    `skip_default` leaves those of `class_path` / `init_args` values in)."""
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    init_args = node.get("init_args")
    if isinstance(node.get("class_path"), str) and isinstance(init_args, dict):
        defaults = class_defaults(node["class_path"])
        kept = {k: v for k, v in init_args.items() if k not in defaults or defaults[k] != v}
        node = {**node, "init_args": kept}
    return {key: _without_defaults(value) for key, value in node.items()}


@functools.cache
def class_defaults(class_path: str) -> dict[str, Any]:
    """A class's init arguments with their defaults, dumped as the CLI's parser dumps them ({} if it cannot say)."""
    import importlib

    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "defaults", fail_untyped=False, skip={"params", "optimizer"})
        dumped = json.loads(parser.dump(parser.get_defaults(), skip_check=True, format="json"))
    except Exception:  # a class the parser cannot describe: hash all of its arguments
        return {}
    defaults = dumped.get("defaults")
    return defaults if isinstance(defaults, dict) else {}


def _drop(tree: dict[str, Any], path: list[str]) -> None:
    node: Any = tree
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def config_hash(hashed: dict[str, Any], seed: int) -> str:
    text = json.dumps({"config": hashed, "seed": seed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _w_and_b(init_args: dict[str, Any], study: str, arm: Arm, seed: int) -> dict[str, Any]:
    """W&B grouping that reproduces the table: group = study, job type = arm, a tag per axis value."""
    tags = list(dict.fromkeys([*(init_args.get("tags") or []), *arm.labels]))
    name = re.sub(r"[^\w.=,+-]", "-", f"{arm.run_name}-seed{seed}")
    return {**init_args, "group": study, "job_type": arm.run_name[:64], "name": name, "tags": [t[:64] for t in tags]}


def _logger(value: Any, directory: Path, study: str, arm: Arm, seed: int) -> Any:
    if isinstance(value, list):
        return [_logger(item, directory, study, arm, seed) for item in value]
    if not isinstance(value, dict) or "class_path" not in value:
        return value
    init_args = dict(value.get("init_args") or {})
    if "save_dir" in init_args:
        init_args["save_dir"] = str(directory)
    if value["class_path"] == WANDB_LOGGER:
        init_args = _w_and_b(init_args, study, arm, seed)
    return {"class_path": value["class_path"], "init_args": init_args}


def runtime_args(resolved: dict[str, Any], directory: Path, study: str, arm: Arm, seed: int) -> list[str]:
    """What the runner adds to a run: its folder for everything it writes, test after fit, tracking."""
    args = [
        "--test_after_fit",
        "true",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(directory),
        "--checkpoint.dirpath",
        str(directory / "checkpoints"),  # fixed, so a resumed run finds its best
    ]
    logger = (resolved.get("trainer") or {}).get("logger")
    if isinstance(logger, dict | list):
        args += ["--trainer.logger", json.dumps(_logger(logger, directory, study, arm, seed))]
    return args + [f"--trainer.callbacks+={RECORDER}", "--trainer.callbacks.init_args.dirpath", str(directory)]


def plan_study(
    study: Study,
    out: Path,
    configs: Sequence[Path] = (),
    sets: Sequence[tuple[str, str]] = (),
    seeds: Sequence[int] | None = None,
) -> list[ArmPlan]:
    """Every arm x seed as a RunSpec; raises ConfigError naming the arm when the parser rejects it."""
    cwd = Path(os.getcwd())
    plans = []
    for arm in study.arms:
        args = study.config_args(arm, configs, sets)
        try:
            full, hashed = resolve(args)
        except ConfigError as error:
            raise ConfigError(f"{study.path}: arm {arm.name!r}: {error}") from None
        runs = []
        for seed in seeds if seeds is not None else study.seeds:
            directory = (out / "runs" / config_hash(hashed, seed)).absolute()
            extra = runtime_args(full, directory, study.name, arm, seed)
            runs.append(RunSpec(study.name, arm.name, seed, directory.name, directory, tuple(args), tuple(extra), cwd))
        try:  # what the runner adds must parse too: checked once per arm, still without instantiating
            resolve([*args, "--seed_everything", str(runs[0].seed), *runs[0].runtime_args])
        except ConfigError as error:
            raise ConfigError(f"{study.path}: arm {arm.name!r} with the runner's arguments: {error}") from None
        plans.append(ArmPlan(arm, tuple(args), full, tuple(runs)))
    return plans
