"""The end of a search: the best trial as a config file, the importance of each parameter, Optuna's plots,
and results.{md,json} with every trial and the compute spent against a full grid of the same space."""

from __future__ import annotations

import json
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml

from experiments.ablation.plan import resolve
from experiments.ablation.report import shown
from experiments.search.space import Search
from experiments.search.trial import params_text

State = optuna.trial.TrialState
PLOTS = {
    "history": "plot_optimization_history",
    "intermediate": "plot_intermediate_values",
    "parallel": "plot_parallel_coordinate",
    "importance": "plot_param_importances",
}


def write_best_config(search: Search, best: optuna.trial.FrozenTrial, sets: tuple, path: Path) -> Path:
    """The best trial's resolved config, runnable as `transfer fit -c <path>` (seed given on the command line)."""
    full, _ = resolve(search.config_args(best.params, sets))
    config = {key: value for key, value in full.items() if key != "seed_everything"}
    header = (f"# {search.name}: trial {best.number}, {search.metric} {best.value:.4f} ({params_text(best.params)})\n"
              f"#   transfer fit -c {shown(path)} --seed_everything 0\n")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def final_study(search: Search, best: optuna.trial.FrozenTrial, path: Path) -> Path:
    """A study file: the base config (`default`) against the best trial's values (`best`) over `final_seeds`."""
    arm: dict[str, Any] = {}
    for parameter in search.space:
        files, keys = parameter.overrides(best.params[parameter.name])
        arm.setdefault("config", []).extend(str(f) for f in files)
        arm.update(dict(keys))
    if not arm.get("config"):
        arm.pop("config", None)
    metric = search.metric if search.metric.startswith("test/") else "test/score"
    study = {
        "description": f"The best trial of search `{search.name}` (trial {best.number}: {params_text(best.params)}) "
        f"against its base config, over seeds {list(search.final_seeds)}.",
        "config": [str(f) for f in search.configs],
        "overrides": dict(search.overrides),
        "arms": {"default": {}, "best": arm},
        "seeds": list(search.final_seeds),
        "metrics": [metric, "fit_seconds"],
        "baseline": "default",
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def importances(study: optuna.Study) -> dict[str, float]:
    """Each parameter's fANOVA importance (Hutter et al. 2014, Optuna's evaluator, a seeded random forest) over
    the complete trials ({} with fewer than two)."""
    if len(study.get_trials(deepcopy=False, states=(State.COMPLETE,))) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # e.g. a parameter that never varied
        return {}


def save_plots(study: optuna.Study, directory: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    for name, function in PLOTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # matplotlib plots are marked experimental
            try:
                axes = getattr(optuna.visualization.matplotlib, function)(study)
            except (RuntimeError, ValueError):  # too few trials for this plot
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        saved.append(path)
    return saved


def trial_seconds(trial: optuna.trial.FrozenTrial, key: str = "wall_seconds") -> float:
    return sum(v for k, v in trial.user_attrs.items() if k.startswith(f"{key}_seed"))


def compute(search: Search, trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """Run time spent (every run of every trial, pruned ones included, each counted once) against a full grid
    of the space (each parameter's `grid` values) at the mean cost of a trial that ran to the end."""
    runs: dict[str, float] = {}
    for trial in trials:
        for key, value in trial.user_attrs.items():
            if key.startswith("run_seed"):
                runs[value] = trial.user_attrs.get(f"wall_seconds_seed{key.removeprefix('run_seed')}", 0.0)
    complete = [trial_seconds(t) for t in trials if t.state == State.COMPLETE and trial_seconds(t)]
    per_trial = statistics.fmean(complete) if complete else None
    grid = search.grid_size()
    spent = sum(runs.values())
    return {
        "spent_seconds": round(spent, 1),
        "runs": len(runs),
        "grid_points": grid,
        "full_trial_seconds": round(per_trial, 1) if per_trial else None,
        "grid_seconds": round(grid * per_trial, 1) if per_trial else None,
        "grid_over_search": round(grid * per_trial / spent, 1) if per_trial and spent else None,
    }


def write_report(search: Search, study: optuna.Study, directory: Path, header: dict[str, str],
                 final: Path | None) -> Path:  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in State}
    found = importances(study)
    plots = save_plots(study, directory / "plots")
    cost = compute(search, trials)
    best = study.best_trial if any(t.state == State.COMPLETE for t in trials) else None
    lines = [f"# Search: {search.name}", "", search.description, ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if value]
    lines += [f"- metric: `{search.metric}` ({search.direction}), seeds per trial {list(search.seeds)}",
              f"- sampler: {search.sampler}; pruner: {search.pruner}",
              "- trials: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n), ""]  # fmt: skip
    if best is not None:
        lines += [f"## Best: trial {best.number}, {search.metric} {best.value:.4f}", ""]
        lines += [f"- `{name}`: {value}" for name, value in best.params.items()]
        lines += ["", "Its config: [best.yaml](best.yaml) (`transfer fit -c best.yaml`)."]
        if final is not None:
            lines += [f"Re-run over seeds {list(search.final_seeds)} against the base config: "
                      "[final/results.md](final/results.md)."]  # fmt: skip
        lines += [""]
    if found:
        lines += ["## Importance (fANOVA over the complete trials)", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| `{name}` | {value:.3f} |" for name, value in found.items()] + [""]
    lines += ["## Compute", ""]
    if cost["grid_seconds"]:
        lines += [f"{cost['runs']} runs took {cost['spent_seconds'] / 60:.1f} min; a full grid of the space "
                  f"({cost['grid_points']} points x {len(search.seeds)} seed(s), each parameter's `grid` values) at "
                  f"{cost['full_trial_seconds']:.0f} s per unpruned trial would take "
                  f"{cost['grid_seconds'] / 60:.0f} min: **{cost['grid_over_search']}x** the search.", ""]  # fmt: skip
    names = [p.name for p in search.space]
    lines += ["## Trials", "", "| trial | state | value | " + " | ".join(n.split(".")[-1] for n in names)
              + " | epochs | seconds | run |", "|" + "---|" * (6 + len(names))]  # fmt: skip
    for t in trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        state = t.state.name.lower() + (f" after {t.user_attrs['pruned_at_epoch'] + 1} epochs"
                                        if "pruned_at_epoch" in t.user_attrs else "")  # fmt: skip
        params = [f"{t.params[n]:.3g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "-"))
                  for n in names]  # fmt: skip
        epochs = int(trial_seconds(t, "epochs")) or "-"
        run = t.user_attrs.get(f"run_seed{search.seeds[0]}", "-")
        lines.append(f"| {t.number} | {state} | {value} | " + " | ".join(params)
                     + f" | {epochs} | {trial_seconds(t):.0f} | {run} |")  # fmt: skip
    lines += ["", *(f"![{p.stem}](plots/{p.name})" for p in plots)]
    path = directory / "results.md"
    path.write_text("\n".join(lines) + "\n")
    records = {
        **header,
        "metric": search.metric,
        "direction": search.direction,
        "best": {"number": best.number, "value": best.value, "params": best.params} if best else None,
        "importances": found,
        "compute": cost,
        "counts": counts,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "intermediate": t.intermediate_values,
                "user_attrs": t.user_attrs,
            }
            for t in trials
        ],  # fmt: skip
        "finished_trials": len(done),
    }
    (directory / "results.json").write_text(json.dumps(records, indent=2, default=str) + "\n")
    return path
