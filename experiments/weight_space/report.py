"""Tables (md, csv, json) and the WiSE-FT plot of a weight-space command's results."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.ablation.report import fmt


def summary_columns(rows: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """The selection metric, the clean test score and the shift sets' means (when tested), if every row has them."""
    wanted = [metric, "test/score", "test/corruptions/acc"]
    return [name for name in wanted if all(name in row["metrics"] for row in rows)]


def write_report(
    directory: Path,
    title: str,
    rows: Sequence[dict[str, Any]],
    metric: str,
    notes: Sequence[str],
    selected: Mapping[str, str],
) -> Path:
    """results.json (every metric of every row, and `selected`: what the command made -> its row's name),
    results.csv and results.md (the summary columns). Each row: {"name": str, "metrics": {...}, **anything
    else shown as is}."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = summary_columns(rows, metric)
    extra = [key for key in rows[0] if key not in ("name", "metrics")] if rows else []
    command = "transfer " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    report = {
        "command": command,
        "notes": list(notes),
        "metric": metric,
        "selected": dict(selected),
        "rows": list(rows),
    }
    (directory / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    with (directory / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *extra, *columns])
        writer.writerows(
            [[row["name"], *(row[k] for k in extra), *(row["metrics"][c] for c in columns)] for row in rows]
        )
    lines = [f"# {title}", "", *(f"- {note}" for note in notes), ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += ["| " + " | ".join(["", *extra, *columns]) + " |", "|" + "---|" * (1 + len(extra) + len(columns))]
    for row in rows:
        cells = [row["name"], *(str(row[k]) for k in extra), *(fmt(row["metrics"][c]) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    path = directory / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_interpolation(rows: Sequence[dict[str, Any]], metric: str, chosen: float, path: Path) -> Path:
    """Accuracy against the mixing coefficient: validation, clean test and mean corruption accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [row["alpha"] for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in summary_columns(rows, metric):
        ax.plot(alphas, [row["metrics"][name] for row in rows], marker="o", label=name)
    ax.axvline(chosen, color="grey", linestyle="--", linewidth=1, label=f"chosen on {metric}: {chosen:g}")
    ax.set_xlabel("alpha (0: start checkpoint, 1: end checkpoint)")
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
