"""A study's runs aggregated per arm and written as results.csv, results.json and results.md."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.ablation.execute import Outcome

if TYPE_CHECKING:
    from experiments.ablation.plan import ArmPlan
from experiments.ablation.runs import read_history
from experiments.ablation.stats import PairedTest, Summary, paired_test, summarize
from experiments.ablation.study import Study

Curve = list[tuple[int, float]]  # (epoch, value)


@dataclass
class Row:
    arm: str
    metric: str
    values: dict[int, float]  # seed -> value, finished runs only
    summary: Summary
    baseline: str | None = None
    test: PairedTest | None = None


@dataclass
class Aggregate:
    study: Study
    arms: list[str]
    rows: list[Row]
    runs: list[dict[str, Any]]
    curves: dict[str, dict[str, list[Curve]]] = field(default_factory=dict)  # metric -> arm -> one per seed
    unknown_metrics: list[str] = field(default_factory=list)

    def rows_of(self, metric: str) -> list[Row]:
        return [row for row in self.rows if row.metric == metric]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["status"] not in ("done", "finished earlier")]


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in ("loss", "error", "seconds", "time"))


def shown(path: str | Path) -> str:
    """A path as reports show it: relative to the folder the study was run from (the project), never the
    absolute path of the machine it ran on."""
    return os.path.relpath(path)


def aggregate(study: Study, plans: Sequence[ArmPlan], outcomes: Mapping[str, Outcome]) -> Aggregate:
    """Per arm and metric: the finished seeds' values, their summary and the paired test vs the baseline."""
    runs, values = [], {}
    for plan in plans:
        for spec in plan.runs:
            outcome = outcomes.get(spec.digest, Outcome("not run"))
            runs.append(
                {
                    "arm": plan.arm.name,
                    "seed": spec.seed,
                    "folder": shown(spec.directory),
                    **{k: v for k, v in asdict(outcome).items() if k != "metrics"},
                    "log": outcome.log and shown(outcome.log),
                    "metrics": outcome.metrics,
                }
            )
            if outcome.finished:
                values[plan.arm.name, spec.seed] = outcome.metrics
    rows, unknown = [], []
    for metric in study.metrics:
        per_arm = {
            plan.arm.name: {
                seed: m[key]
                for (arm, seed), m in values.items()
                if arm == plan.arm.name and (key := plan.arm.metric_key(metric)) in m
            }
            for plan in plans
        }
        if values and not any(per_arm.values()):
            unknown.append(metric)
        for plan in plans:
            base = study.baseline_of(plan.arm)
            row = Row(plan.arm.name, metric, per_arm[plan.arm.name], summarize(list(per_arm[plan.arm.name].values())))
            if base is not None:
                row.baseline, row.test = base.name, paired_test(row.values, per_arm[base.name])
            rows.append(row)
    result = Aggregate(study, [plan.arm.name for plan in plans], rows, runs, unknown_metrics=unknown)
    result.curves = _curves(study, plans, outcomes)
    return result


def _curves(
    study: Study, plans: Sequence[ArmPlan], outcomes: Mapping[str, Outcome]
) -> dict[str, dict[str, list[Curve]]]:
    histories = {
        plan.arm.name: [
            read_history(spec.directory) for spec in plan.runs if outcomes.get(spec.digest, Outcome("not run")).finished
        ]
        for plan in plans
    }
    wanted = list(study.curves) or list(dict.fromkeys(["val/loss", *(p.monitor for p in plans if p.monitor)]))
    curves: dict[str, dict[str, list[Curve]]] = {}
    for metric in wanted:
        per_arm = {}
        for plan in plans:
            key = plan.arm.metric_key(metric)
            runs = histories[plan.arm.name]
            per_arm[plan.arm.name] = [[(row["epoch"], row[key]) for row in rows if key in row] for rows in runs]
        if any(curve for runs in per_arm.values() for curve in runs):
            curves[metric] = per_arm
    return curves


def decimals(values: Sequence[float]) -> int:
    """One precision per table: 4 decimals for fractions, fewer for seconds and the like."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return 1 if largest >= 100 else 2 if largest >= 10 else 4


def fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


COLUMNS = [
    "arm",
    "metric",
    "n",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "baseline",
    "n_pairs",
    "diff_vs_baseline",
    "p_paired_t",
    "p_sign_flip",
    "seeds",
    "values",
]


def table_rows(result: Aggregate) -> list[list[object]]:
    """One row per arm and metric, in `COLUMNS` order (results.csv, the W&B table)."""
    rows: list[list[object]] = []
    for row in result.rows:
        s, t = row.summary, row.test
        rows.append(
            [
                row.arm,
                row.metric,
                s.n,
                s.mean,
                s.std,
                s.ci_low,
                s.ci_high,
                row.baseline,
                t and t.n,
                t and t.diff,
                t and t.p_ttest,
                t and t.p_sign_flip,
                " ".join(map(str, row.values)),
                " ".join(map(str, row.values.values())),
            ]
        )
    return rows


def write_csv(result: Aggregate, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(table_rows(result))


def write_json(result: Aggregate, path: Path, command: str, plots: Mapping[str, str]) -> None:
    data = {
        "study": result.study.name,
        "study_file": shown(result.study.path),
        "command": command,
        "seeds": list(result.study.seeds),
        "metrics": list(result.study.metrics),
        "baseline": result.study.baseline,
        "rows": [
            {
                "arm": r.arm,
                "metric": r.metric,
                "values": r.values,
                **asdict(r.summary),
                "baseline": r.baseline,
                "test": asdict(r.test) if r.test else None,
            }
            for r in result.rows
        ],
        "runs": result.runs,
        "plots": dict(plots),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def markdown_table(result: Aggregate, metric: str) -> str:
    rows = result.rows_of(metric)
    digits = decimals([r.summary.mean for r in rows if r.summary.n])
    pick = min if lower_is_better(metric) else max
    best: dict[tuple[tuple[str, str], ...], float] = {}  # per group of arms compared with one another
    for r in rows:
        if r.summary.n:
            group = result.study.comparison_group(result.study.arm(r.arm))
            best[group] = pick(best.get(group, r.summary.mean), r.summary.mean)
    lines = [
        f"| arm | n | {metric} (mean ± std) | 95 % CI | Δ vs baseline | p (paired t) | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, t = r.summary, r.test
        group = result.study.comparison_group(result.study.arm(r.arm))
        name = f"**{r.arm}**" if s.n and s.mean == best.get(group) else r.arm
        if r.baseline is None and any(other.baseline == r.arm for other in rows):
            name += " (baseline)"
        mean = f"{fmt(s.mean, digits)} ± {fmt(s.std, digits)}" if s.n else "-"
        ci = f"[{fmt(s.ci_low, digits)}, {fmt(s.ci_high, digits)}]" if s.ci_low is not None else "-"
        diff = f"{fmt(t.diff, digits, sign=True)} ({t.n} seed{'s' if t.n > 1 else ''})" if t else "-"
        seeds = " / ".join(fmt(v, digits) for v in r.values.values()) or "-"
        lines.append(f"| {name} | {s.n} | {mean} | {ci} | {diff} | {fmt_p(t.p_ttest if t else None)} | {seeds} |")
    return "\n".join(lines)


def write_markdown(result: Aggregate, path: Path, command: str, plots: Mapping[str, str], wall: float | None) -> None:
    study = result.study
    total, done = len(result.runs), len(result.runs) - len(result.failed)
    unique = {run["folder"]: run for run in result.runs}  # arms that cover an axis share their runs
    shared = f" in {len(unique)} runs" if len(unique) < total else ""
    parts = [f"# Study `{study.name}`", ""]
    if study.description:
        parts += [study.description, ""]
    parts += [
        f"`{command}`",
        "",
        f"{total} runs ({len(result.arms)} arms x seeds {', '.join(map(str, study.seeds))}{shared}): {done} finished"
        + (f", {len(result.failed)} not finished (below)." if result.failed else ".")
        + " Mean ± sample std over seeds; 95 % CI: Student-t interval of the mean; Δ: arm minus its baseline"
        " over the seeds both finished, with the two-sided paired t-test's p (results.csv also has an exact"
        " sign-flip permutation test). The best mean (of the arms sharing a baseline) is in bold.",
        "",
    ]
    for metric in study.metrics:
        parts += [f"## {metric}", "", markdown_table(result, metric), ""]
        if metric in plots:
            parts += [f"![{metric}]({plots[metric]})", ""]
    curves = [name for name in plots if name.startswith("curve:")]
    if curves:
        parts += ["## Validation curves", "", "Mean over seeds per epoch; the band spans the seeds.", ""]
        parts += [f"![{name[6:]}]({plots[name]})" for name in curves] + [""]
    if result.unknown_metrics:
        parts += [f"Not found in any run's results.json: {', '.join(result.unknown_metrics)}.", ""]
    if result.failed:
        parts += ["## Runs not finished", "", "| arm | seed | status | attempts | log |", "|---|---|---|---|---|"]
        parts += [
            f"| {r['arm']} | {r['seed']} | {r['status']} | {r['attempts']} | `{r['log']}` |" for r in result.failed
        ]
        parts += ["", "Re-run the same command to retry them; finished runs are not run again.", ""]
    compute = sum(run["seconds"] for run in unique.values()) / 60
    parts += [f"The runs took {compute:.1f} min in all (each run's wall time, retries included)."]
    if wall is not None:
        parts[-1] += f" Wall time of the last invocation: {wall / 60:.1f} min."
    parts += [f"Runs: `{Path(result.runs[0]['folder']).parent}`.", ""]
    path.write_text("\n".join(parts))


def write_results(
    result: Aggregate, directory: Path, command: str, plots: Mapping[str, str], wall: float | None = None
) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"results.{name}" for name in ("csv", "json", "md")}
    write_csv(result, paths["csv"])
    write_json(result, paths["json"], command, plots)
    write_markdown(result, paths["md"], command, plots, wall)
    return paths
