"""Weights & Biases that never blocks or breaks training: offline by itself without credentials, and offline
(after a bounded wait) when the server cannot be reached."""

from __future__ import annotations

import configparser
import contextlib
import netrc
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_modules.lightning_internals import set_wandb_run, wandb_is_offline, wandb_logger_run_id, wandb_run


def wandb_base_url() -> str:
    """The W&B server: WANDB_BASE_URL, else the `base_url` that `wandb login --host` saved, else W&B's cloud."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    settings = configparser.ConfigParser()
    folder = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
    with contextlib.suppress(configparser.Error):
        settings.read(folder / "settings")
    return settings.get("default", "base_url", fallback="https://api.wandb.ai")


def wandb_credentials_found() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(wandb_base_url()).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_unreachable(timeout: float) -> str | None:
    """Why the W&B server (`wandb_base_url`) gives no HTTP answer within `timeout` seconds, or None when it
    answers (any status counts: a refused key is W&B's to report). Goes through the proxies the environment
    names, as W&B does."""
    url = wandb_base_url()
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as error:
        return f"{url}: {getattr(error, 'reason', None) or error or type(error).__name__}"
    return None


def wandb_offline_by_default() -> bool:
    """Offline when WANDB_MODE says so, or when it is unset and no credentials are found."""
    mode = os.environ.get("WANDB_MODE")
    return mode in ("offline", "dryrun") or (mode is None and not wandb_credentials_found())


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with the defaults this project needs.

    Each run gets its own directory `<save_dir>/<run id>` (config, metadata, checkpoints, wandb files), made
    when the run starts (a config error creates none). With no credentials (and no WANDB_MODE chosen) it logs
    offline and says how to sync. Online, it never hangs the training: a server that does not
    answer within `connect_timeout` seconds (closed port, no route, a server that hangs), or a `wandb.init` that
    fails or gives up (W&B's own `init_timeout`, plus about 10 s of its login check), leaves the run logging
    offline, with a warning that says so and how to sync. Offline runs make no network connection.

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
        init_timeout: Seconds `wandb.init` may wait for the server before the run goes offline.
        connect_timeout: Seconds to wait for the server to answer an HTTP request before going offline at once.
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
        init_timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ):
        import wandb

        if offline is None:
            offline = wandb_offline_by_default()
        run_id = secrets.token_hex(4)
        run_dir = Path(save_dir) / (f"{name}-{run_id}" if name else run_id)
        self._run_dir = run_dir
        self._connect_timeout = connect_timeout
        super().__init__(
            name=name,
            save_dir=str(run_dir.absolute()),  # a W&B service this process inherits (WANDB_SERVICE) has its own cwd
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
            set_wandb_run(self, run_id, offline=True)
            rank_zero_info(
                f"W&B: no credentials found, logging offline to {run_dir}/wandb. "
                f"Sync later with `wandb sync {run_dir}/wandb/offline-run-*` after `wandb login`."
            )

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        run = wandb_run(self)
        if run is not None:
            return run
        self._run_dir.mkdir(parents=True, exist_ok=True)
        if not wandb_is_offline(self):
            reason = server_unreachable(self._connect_timeout)
            if reason is not None:
                self._go_offline(f"the server is unreachable within {self._connect_timeout:g} s ({reason})")
        try:
            return LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]
        except Exception as error:  # a server that does not answer must not cost the training run
            if wandb_is_offline(self):
                raise
            self._go_offline(f"wandb.init failed: {error}")
            return LightningWandbLogger.experiment.fget(self)  # type: ignore[attr-defined]

    def finish(self, failed: bool = False) -> None:
        """End the W&B run, as W&B would at process exit, so that another run in this process (a notebook,
        in-process tests) starts a W&B run of its own instead of logging into this one."""
        run = wandb_run(self)
        if run is not None and hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)

    def continue_run(self, run_id: str) -> None:
        """Log into the W&B run `run_id` (the run a resumed training continues) instead of a new one. Online
        only: W&B cannot resume an offline run (two offline folders of one id overwrite each other when
        synced), so offline the continuation keeps its own id, and says so."""
        own = wandb_logger_run_id(self)
        if wandb_run(self) is not None or run_id == own:
            return
        if wandb_is_offline(self):
            rank_zero_info(
                f"W&B: this run continues run {run_id}, which W&B cannot resume offline; it logs as run {own}."
            )
            return
        set_wandb_run(self, run_id, resume="allow")
        rank_zero_info(f"W&B: continuing run {run_id}")

    def _go_offline(self, why: str) -> None:
        # A fresh run id: W&B keeps the id of a failed online start reserved in this process.
        set_wandb_run(self, f"{wandb_logger_run_id(self)}-offline", offline=True)
        rank_zero_warn(
            f"W&B could not start online, {why}; logging offline to {self._run_dir}/wandb instead. Sync it later "
            f"with `wandb sync {self._run_dir}/wandb/offline-run-*`."
        )


class WandbRunId(Callback):
    """Keeps the W&B run id in every checkpoint, so that a run resumed from one continues that W&B run
    (`wandb_run_id`, `WandbLogger.continue_run`) instead of appearing twice."""

    def __init__(self, logger: WandbLogger):
        self.logger = logger

    def state_dict(self) -> dict[str, Any]:
        return {"id": str(self.logger.version)}


def wandb_run_id(checkpoint: object) -> str | None:
    """The W&B run id a checkpoint was written under (by `WandbRunId`), if any."""
    callbacks = checkpoint.get("callbacks") if isinstance(checkpoint, dict) else None
    state = callbacks.get(WandbRunId.__qualname__) if isinstance(callbacks, dict) else None
    run_id = state.get("id") if isinstance(state, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None
