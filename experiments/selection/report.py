"""A selection's ranked table as results.{md,csv,json}, a plot per score, and a W&B table when W&B is on."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from experiments.ablation.report import fmt, shown
from experiments.selection.run import Scored
from experiments.tracking import wandb_offline_by_default
from lightning_modules.transferability import SCORES


def ranked(results: Sequence[Scored], rank_by: str) -> list[Scored]:
    """Best first by `rank_by`; candidates the score does not apply to come last, in the given order."""
    return sorted(
        results, key=lambda r: -r.scores[rank_by] if math.isfinite(r.scores.get(rank_by, math.nan)) else math.inf
    )


def score_names(results: Sequence[Scored]) -> list[str]:
    present = {name for r in results for name in r.scores}
    return [name for name in SCORES if name in present]


def columns(results: Sequence[Scored]) -> list[str]:
    return ["rank", "candidate", "backbone", "pretrained", "cut", "dim", *score_names(results), "feature_s", "score_s"]


def rows(results: Sequence[Scored], rank_by: str) -> list[list[Any]]:
    names = score_names(results)
    table = []
    for position, r in enumerate(ranked(results, rank_by), 1):
        c = r.candidate
        cut = c.cut or (f"layers={c.layers}" if c.layers else "") + (f" pooling={c.pooling}" if c.pooling else "")
        table.append(
            [
                position,
                c.name,
                c.backbone if not c.weights else f"{c.backbone} ({shown(c.weights)})",
                c.pretrained,
                cut.strip(),
                r.num_features,
                *(r.scores.get(n, math.nan) for n in names),
                round(r.feature_seconds, 2),
                round(sum(r.score_seconds.values()), 2),
            ]  # fmt: skip
        )
    return table


def write_markdown(results: Sequence[Scored], rank_by: str, path: Path, header: dict[str, str]) -> None:
    names = score_names(results)
    head = columns(results)
    lines = [f"# Selection: {header['name']}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "name" and value]
    lines += [f"- ranked by `{rank_by}` (higher is better for every score); `-`: the score does not apply", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(results, rank_by):
        cells = [fmt(v) if isinstance(v, float) and head[i] in names else str(v) for i, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Scores:", *(f"- `{n}`: {SCORES[n].paper}" for n in names)]
    cached = [r.candidate.name for r in results if r.cached]
    if cached:
        lines += ["", f"Features read from the feature cache: {', '.join(cached)} (feature_s is then the read time)."]
    path.write_text("\n".join(lines) + "\n")


def write_results(results: Sequence[Scored], rank_by: str, directory: Path, header: dict[str, str]) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind: directory / f"results.{kind}" for kind in ("md", "csv", "json")}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns(results))
        writer.writerows(rows(results, rank_by))
    records = [dict(zip(columns(results), row, strict=True)) for row in rows(results, rank_by)]
    paths["json"].write_text(json.dumps({**header, "rank_by": rank_by, "candidates": records}, indent=2) + "\n")
    paths["png"] = directory / "plots" / "scores.png"
    plot_scores(results, rank_by, paths["png"])
    header = {**header, "plot": "![scores](plots/scores.png)"}
    write_markdown(results, rank_by, paths["md"], header)
    return paths


def plot_scores(results: Sequence[Scored], rank_by: str, path: Path) -> None:
    """One panel per score: a bar per candidate, in rank order (best at the top)."""
    names = score_names(results)
    order = ranked(results, rank_by)
    fig = Figure(figsize=(3.0 * len(names) + 1.5, 0.35 * len(order) + 1.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
    y = np.arange(len(order))[::-1]
    for ax, name in zip(axes, names, strict=True):
        values = np.array([r.scores.get(name, np.nan) for r in order])
        ax.barh(y, np.nan_to_num(values), color=["tab:orange" if name == rank_by else "tab:blue"] * len(order))
        ax.set_title(name + (" (rank)" if name == rank_by else ""), fontsize=9)
    axes[0].set_yticks(y, [r.candidate.name for r in order])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def log_wandb_table(results: Sequence[Scored], rank_by: str, name: str, project: str, directory: Path) -> str:
    """The ranked table as a W&B Table in a `selection` run (offline without credentials); never fails the
    selection (a problem becomes a one-line message)."""
    try:
        import wandb

        offline = wandb_offline_by_default()
        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project, group=name, job_type="selection", name=f"{name}-selection", dir=str(directory),
            mode="offline" if offline else "online", config={"rank_by": rank_by},
            settings=wandb.Settings(init_timeout=60, console="off", silent=True),
        )  # fmt: skip
        run.log({"selection": wandb.Table(columns=list[str | int](columns(results)), data=rows(results, rank_by))})
        run.finish()
        return f"W&B: selection table logged {'offline in ' + str(directory / 'wandb') if offline else 'online'}"
    except Exception as error:  # tracking must not cost the selection its report
        return f"W&B: selection table not logged ({type(error).__name__}: {error})"
