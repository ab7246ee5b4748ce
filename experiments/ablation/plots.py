"""PNG plots of a study: a bar chart with 95 % intervals per metric, validation curves per arm.

matplotlib's object API (Figure, no pyplot): no global state, no display needed, safe off the main thread.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from experiments.ablation.report import Aggregate, Curve, lower_is_better


def slug(metric: str) -> str:
    return re.sub(r"[^\w.-]+", "_", metric).strip("_")


def bar_chart(result: Aggregate, metric: str, path: Path) -> None:
    rows = [row for row in result.rows_of(metric) if row.summary.n]
    baselines = {row.baseline for row in result.rows_of(metric) if row.baseline}
    fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 2.0), 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    means = np.array([row.summary.mean for row in rows])
    low = np.array(
        [
            row.summary.mean - (row.summary.ci_low if row.summary.ci_low is not None else row.summary.mean)
            for row in rows
        ]
    )
    high = np.array(
        [
            (row.summary.ci_high if row.summary.ci_high is not None else row.summary.mean) - row.summary.mean
            for row in rows
        ]
    )
    colors = ["tab:gray" if row.arm in baselines else "tab:blue" for row in rows]
    ax.bar(x, means, yerr=np.vstack([low, high]), capsize=4, color=colors, alpha=0.8)
    for i, row in enumerate(rows):  # each seed's value on its bar
        ax.plot([i] * len(row.values), list(row.values.values()), "k.", markersize=5)
    ax.set_xticks(x, [row.arm for row in rows], rotation=30, ha="right")
    direction = "lower is better" if lower_is_better(metric) else "higher is better"
    ax.set_ylabel(f"{metric} ({direction})")
    ax.set_title(f"{result.study.name}: mean, 95 % CI (bars), seeds (dots); grey: baseline", fontsize=9)
    if len(means) and not lower_is_better(metric):  # zoom on the differences, not on the distance from 0
        top = max(means + high)
        bottom = min(min(means - low), min(v for row in rows for v in row.values.values()))
        span = max(top - bottom, 1e-6)
        ax.set_ylim(max(0.0, bottom - 0.5 * span) if bottom >= 0 else bottom - 0.5 * span, top + 0.2 * span)
    fig.savefig(path, dpi=110)


def curve_chart(result: Aggregate, metric: str, curves: dict[str, list[Curve]], path: Path) -> None:
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for arm, runs in curves.items():
        runs = [run for run in runs if run]
        if not runs:
            continue
        epochs = sorted({epoch for run in runs for epoch, _ in run})
        table = np.full((len(runs), len(epochs)), np.nan)
        for i, run in enumerate(runs):
            for epoch, value in run:
                table[i, epochs.index(epoch)] = value
        with np.errstate(all="ignore"):
            mean = np.nanmean(table, axis=0)
        epochs = [epoch + 1 for epoch in epochs]  # Lightning counts from 0, people from 1
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=arm)
        if len(runs) > 1:
            ax.fill_between(
                epochs, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color=line.get_color(), alpha=0.15
            )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(f"{result.study.name}: {metric} per epoch (mean over seeds; band: min-max)", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def draw_plots(result: Aggregate, directory: Path, relative_to: Path) -> dict[str, str]:
    """Every plot as PNG in `directory`; returns metric (or `curve:<metric>`) -> path relative to `relative_to`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for metric in result.study.metrics:
        if any(row.summary.n for row in result.rows_of(metric)):
            path = directory / f"{slug(metric)}.png"
            bar_chart(result, metric, path)
            written[metric] = path
    for metric, curves in result.curves.items():
        if any(run for runs in curves.values() for run in runs):
            path = directory / f"curves_{slug(metric)}.png"
            curve_chart(result, metric, curves, path)
            written[f"curve:{metric}"] = path
    return {name: path.relative_to(relative_to).as_posix() for name, path in written.items()}
