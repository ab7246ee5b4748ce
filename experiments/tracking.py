"""Weights & Biases that never blocks or breaks training: offline by itself without credentials."""

from __future__ import annotations

import netrc
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def wandb_credentials_found() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline_by_default() -> bool:
    """Offline when WANDB_MODE says so, or when it is unset and no credentials are found."""
    mode = os.environ.get("WANDB_MODE")
    return mode in ("offline", "dryrun") or (mode is None and not wandb_credentials_found())


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with the defaults this project needs.

    Each run gets its own directory `<save_dir>/<run id>` (config, metadata, checkpoints, wandb files).
    With no credentials (and no WANDB_MODE chosen) it logs offline and says how to sync; if an online
    run cannot start, it falls back to offline instead of failing the training.

    Args:
        project: W&B project.
        group: Group of runs (e.g. the dataset or study).
        name: Display name of the run.
        tags: Tags of the run.
        job_type: W&B job type.
        save_dir: Root folder of the runs.
        offline: Force offline (True) or online (False); None decides from the credentials found.
        entity: W&B entity (user or team).
        log_model: Upload checkpoints as artifacts (online only).
        init_timeout: Seconds to wait for W&B to start before going offline.
    """

    def __init__(
        self,
        project: str = "transfer",
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        save_dir: str = "runs",
        offline: bool | None = None,
        entity: str | None = None,
        log_model: bool = False,
        init_timeout: float = 60.0,
    ):
        import wandb

        if offline is None:
            offline = wandb_offline_by_default()
        run_id = secrets.token_hex(4)
        run_dir = Path(save_dir) / (f"{name}-{run_id}" if name else run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name=name,
            save_dir=str(run_dir),
            project=project,
            id=run_id,
            offline=offline,
            log_model=log_model and not offline,
            group=group,
            tags=tags,
            job_type=job_type,
            entity=entity,
            settings=wandb.Settings(init_timeout=init_timeout, console="off"),
        )
        if offline:
            rank_zero_info(
                f"W&B: no credentials found, logging offline to {run_dir}/wandb. "
                f"Sync later with `wandb sync {run_dir}/wandb/offline-run-*` after `wandb login`."
            )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        try:
            return LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        except Exception as error:  # an unreachable server must not cost the training run
            if self._offline:
                raise
            rank_zero_warn(f"W&B could not start online ({error}); logging offline instead, sync it later.")
            self._offline = True
            self._experiment = None
            return LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
