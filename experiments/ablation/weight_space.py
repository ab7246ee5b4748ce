"""A study's `weight_space` arms: WiSE-FT and model soups made from its runs' checkpoints, seed by seed.

Each arm x seed is one `transfer wise-ft` or `transfer soup` over the best checkpoints of its source arms'
runs of that seed, evaluated with the last source arm's config (its files and keys, the command line's
`--set`), so the study's shift sets are tested too. The command's report lands in
`<out>/weight_space/<hash>/`, named by the command and its checkpoints (a greedy and a uniform soup of the same
arms share one); a finished report is read again instead of re-run. The arm reports the row the command made
(the WiSE-FT mix chosen on validation, the greedy or the uniform soup), its validation metric as `best_score`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.ablation.execute import Outcome, Status, _tail
from experiments.ablation.plan import ArmPlan
from experiments.ablation.runs import RESULT, RunSpec, read_json
from experiments.ablation.study import WEIGHT_SPACE, Study, WeightSpaceArm, cli_value

REPORT = "results.json"
LOG = "command.log"


def command_args(
    study: Study, arm: WeightSpaceArm, configs: Sequence[Path], sets: Sequence[tuple[str, Any]]
) -> list[str]:
    """The config options of the weight-space command: the last source arm's files and keys."""
    files, keys = study.files_and_keys(study.arm(arm.sources[-1]), configs, sets)
    args = [arg for path in files for arg in ("-c", str(path))]
    args += [arg for key, value in keys for arg in ("--set", f"{key}={cli_value(value)}")]
    if arm.alphas:
        args += ["--alphas", *(f"{alpha:g}" for alpha in arm.alphas)]
    return [*args, "--metric", arm.metric]


def weight_space_plans(
    study: Study,
    plans: Sequence[ArmPlan],
    out: Path,
    configs: Sequence[Path] = (),
    sets: Sequence[tuple[str, Any]] = (),
) -> list[ArmPlan]:
    """One plan per weight-space arm; each RunSpec's `config_args` are the command's (checkpoints aside) and
    its `runtime_args` the source runs' folders, in order."""
    by_arm = {plan.arm.name: {spec.seed: spec for spec in plan.runs} for plan in plans}
    result = []
    for arm in study.weight_space:
        args = command_args(study, arm, configs, sets)
        runs = []
        for seed in by_arm[arm.sources[0]]:
            sources = [by_arm[source][seed].directory for source in arm.sources]
            cwd = by_arm[arm.sources[0]][seed].cwd
            key = json.dumps([WEIGHT_SPACE[arm.kind], [source.name for source in sources], args])
            directory = (out / "weight_space" / hashlib.sha256(key.encode()).hexdigest()[:12]).absolute()
            runs.append(
                RunSpec(
                    study.name,
                    arm.name,
                    seed,
                    f"{directory.name}:{arm.kind}",  # unique per arm: soups of the same arms share the folder
                    directory,
                    tuple(args),
                    tuple(map(str, sources)),
                    cwd,
                )  # fmt: skip
            )
        result.append(ArmPlan(arm.arm, tuple(args), {}, tuple(runs)))
    return result


def best_checkpoint(run: Path) -> Path | None:
    """The checkpoint a finished run was tested with (its best), else its last; None when it did not finish."""
    record = read_json(run / RESULT)
    if not isinstance(record, dict):
        return None
    results = read_json(Path(record.get("results", "")))
    best = results.get("best_checkpoint") if isinstance(results, dict) else None
    return Path(best) if best else run / "checkpoints" / "last.ckpt"


def read_outcome(spec: RunSpec, kind: str, status: Status = "finished earlier") -> Outcome | None:
    report = read_json(spec.directory / REPORT)
    if not isinstance(report, dict) or kind not in report.get("selected", {}):
        return None
    row = next(row for row in report["rows"] if row["name"] == report["selected"][kind])
    metrics = {**row["metrics"], "best_score": row["metrics"][report["metric"]]}
    if "alpha" in row:
        metrics["alpha"] = row["alpha"]
    return Outcome(status, metrics, log=str(spec.directory / LOG))


def run_weight_space(study: Study, plans: Sequence[ArmPlan], console: Any) -> dict[str, Outcome]:
    """Run (or read again) every weight-space arm x seed whose source runs finished; never raises for a failure."""
    kinds = {arm.name: arm.kind for arm in study.weight_space}
    outcomes: dict[str, Outcome] = {}
    for plan in plans:
        kind = kinds[plan.arm.name]
        for spec in plan.runs:
            outcome = read_outcome(spec, kind)
            if outcome is None:
                outcome = _run(spec, kind)
                console.print(f"{outcome.status} {spec.label}: {spec.directory}")
            outcomes[spec.digest] = outcome
    return outcomes


def _run(spec: RunSpec, kind: str) -> Outcome:
    checkpoints = [best_checkpoint(Path(source)) for source in spec.runtime_args]
    if any(checkpoint is None for checkpoint in checkpoints):
        return Outcome("not run", error="a source run did not finish")
    spec.directory.mkdir(parents=True, exist_ok=True)
    log = spec.directory / LOG
    command = [sys.executable, "-m", "experiments.entry", WEIGHT_SPACE[kind], *map(str, checkpoints),
               *spec.config_args, "--out", str(spec.directory)]  # fmt: skip
    with log.open("wb") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=spec.cwd).returncode
    outcome = read_outcome(spec, kind, "done") if code == 0 else None
    return outcome or Outcome("failed", attempts=1, log=str(log), error=f"exited with code {code}:\n{_tail(log)}")
