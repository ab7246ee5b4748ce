"""The W&B sweep equivalent to a study, for teams that run W&B agents instead of `transfer ablate`.

A W&B grid is a plain product of parameters, while a study's arms are sets of overrides (and may sit
outside its grid). So each arm becomes one config file (its resolved config, W&B group/job type/tags
included, seed left out) and the sweep is the grid `config` x `seed_everything`: the same runs, the
same W&B grouping. Agents run `python -m experiments.cli fit --config=<arm>.yaml --seed_everything=<s>`
from the directory the paths are relative to.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments.ablation.plan import WANDB_LOGGER, ArmPlan
from experiments.ablation.plots import slug
from experiments.ablation.report import lower_is_better
from experiments.ablation.study import Study

HEADER = """\
# W&B sweep equivalent to {study_file}: {arms} arms x {seeds} seeds, one run each (grid).
# Create it, then start agents from `{cwd}` (the config paths are relative to it):
#   wandb sweep {path}
#   wandb agent <entity>/<project>/<sweep id>
"""


def _piece(plan: ArmPlan, study: Study) -> dict[str, Any]:
    config = {k: v for k, v in plan.resolved.items() if k != "seed_everything"}
    config["test_after_fit"] = True
    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and logger.get("class_path") == WANDB_LOGGER:
        init_args = dict(logger.get("init_args") or {})
        tags = list(dict.fromkeys([*(init_args.get("tags") or []), *plan.arm.labels]))
        init_args.update(group=study.name, job_type=plan.arm.run_name[:64], tags=[t[:64] for t in tags])
        config["trainer"] = {**config["trainer"], "logger": {**logger, "init_args": init_args}}
    return config


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive
        return str(path.absolute())


def export_sweep(study: Study, plans: Sequence[ArmPlan], path: Path, seeds: Sequence[int] | None = None) -> Path:
    """Write `path` and one `<path stem>/<arm>.yaml` per arm beside it; returns `path`."""
    pieces = path.parent / path.stem
    pieces.mkdir(parents=True, exist_ok=True)
    files = []
    unique = {plan.runs[0].digest: plan for plan in reversed(plans)}  # arms that share runs: one piece, the first
    for plan in (plan for plan in plans if unique[plan.runs[0].digest] is plan):
        piece = pieces / f"{slug(plan.arm.run_name)}.yaml"
        piece.write_text(
            f"# {study.name}, arm {plan.arm.run_name}: resolved by `transfer ablate`\n"
            + yaml.safe_dump(_piece(plan, study), sort_keys=False)
        )
        files.append(_relative(piece))
    project = next(
        (
            ((p.resolved.get("trainer") or {}).get("logger") or {}).get("init_args", {}).get("project")
            for p in plans
            if p.logger_class == WANDB_LOGGER
        ),
        None,
    )
    metric = study.metrics[0]
    sweep = {
        "name": study.name,
        **({"project": project} if project else {}),
        "program": "experiments/cli.py",
        "method": "grid",
        "metric": {"name": metric, "goal": "minimize" if lower_is_better(metric) else "maximize"},
        "parameters": {
            "config": {"values": files},
            "seed_everything": {"values": list(seeds if seeds is not None else study.seeds)},
        },
        "command": ["${env}", "${interpreter}", "-m", "experiments.cli", "fit", "${args}"],
    }
    header = HEADER.format(
        study_file=study.path,
        arms=len(files),
        seeds=len(sweep["parameters"]["seed_everything"]["values"]),
        cwd=os.getcwd(),
        path=_relative(path),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(sweep, sort_keys=False))
    return path
