"""The study's table as a W&B Table, in a `summary` run of the study's group. Offline without
credentials, like every run here; it never fails the study (a problem becomes a one-line message)."""

from __future__ import annotations

from pathlib import Path

from experiments.ablation import report
from experiments.ablation.report import Aggregate
from experiments.tracking import wandb_offline_by_default

# The columns of results.csv a person compares in W&B: the pairing details and per-seed values stay in the CSV.
LEFT_OUT = ("n_pairs", "p_sign_flip", "seeds", "values")
COLUMNS: list[str | int] = [column for column in report.COLUMNS if column not in LEFT_OUT]


def table_rows(result: Aggregate) -> list[list[object]]:
    picks = [i for i, column in enumerate(report.COLUMNS) if column not in LEFT_OUT]
    return [[row[i] for i in picks] for row in report.table_rows(result)]


def log_summary_table(result: Aggregate, project: str, directory: Path, entity: str | None = None) -> str:
    """Log the table; returns what happened, for the terminal."""
    try:
        import wandb

        offline = wandb_offline_by_default()
        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project,
            entity=entity,
            group=result.study.name,
            job_type="summary",
            name=f"{result.study.name}-summary",
            dir=str(directory),
            mode="offline" if offline else "online",
            config={
                "study_file": str(result.study.path),
                "seeds": list(result.study.seeds),
                "baseline": result.study.baseline,
            },
            settings=wandb.Settings(init_timeout=60, console="off", silent=True),
        )
        run.log({"results": wandb.Table(columns=COLUMNS, data=table_rows(result))})
        for row in result.rows:
            run.summary[f"{row.arm}/{row.metric}"] = row.summary.mean
        run.finish()
        where = (
            f"offline in {directory}/wandb (sync with `wandb sync {directory}/wandb/offline-run-*`)"
            if offline
            else "online"
        )
        return f"W&B: summary table logged {where}, group {result.study.name}"
    except Exception as error:  # tracking must not cost the study its report
        return f"W&B: summary table not logged ({type(error).__name__}: {error})"
