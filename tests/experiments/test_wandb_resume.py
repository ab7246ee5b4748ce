"""A run resumed from a checkpoint continues its W&B run (online) instead of appearing as a second run."""

import socket

import torch

from experiments.cli import CONFIGS, cli_main
from experiments.tracking import WandbLogger, WandbRunId, wandb_run_id

TINY = ["fit", "--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
        "--data", "SyntheticDataModule", "--trainer.enable_progress_bar", "false",
        "-c", str(CONFIGS / "logger" / "wandb.yaml"), "--trainer.logger.init_args.save_dir", "runs"]  # fmt: skip


def test_online_the_continuation_takes_the_run_id_offline_it_keeps_its_own(tmp_path):
    online = WandbLogger(save_dir=str(tmp_path), offline=False)
    online.continue_run("run-a")
    assert online.version == "run-a" and online._wandb_init["id"] == "run-a"
    assert online._wandb_init["resume"] == "allow"
    online._go_offline("test")  # an online start that fails: offline under a fresh id, without resume
    assert online.version == "run-a-offline"

    offline = WandbLogger(save_dir=str(tmp_path), offline=True)
    own = offline.version
    offline.continue_run("run-a")  # W&B cannot resume offline runs: syncing would overwrite one with the other
    assert offline.version == offline._wandb_init["id"] == own != "run-a"


def test_wandb_run_id_reads_only_what_the_callback_wrote():
    logger = WandbLogger(offline=True)
    checkpoint = {"callbacks": {WandbRunId.__qualname__: WandbRunId(logger).state_dict()}}
    assert wandb_run_id(checkpoint) == logger.version
    assert wandb_run_id({}) is None and wandb_run_id({"callbacks": {"WandbRunId": {"id": 3}}}) is None


def test_resuming_from_a_checkpoint_continues_the_checkpoints_wandb_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = cli_main([*TINY, "--trainer.max_epochs", "1", "--checkpoint.dirpath", "ckpts"])
    run_id = first.trainer.logger.version
    checkpoint = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)
    assert wandb_run_id(checkpoint) == run_id

    with socket.create_server(("127.0.0.1", 0)) as server:  # a port nothing listens on once closed
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    args = ["--trainer.max_epochs", "2", "--trainer.logger.init_args.offline", "false"]
    resumed = cli_main([*TINY, *args, "--ckpt_path", str(tmp_path / "ckpts" / "last.ckpt")])
    # Online it asked W&B for run `run_id`; the server is unreachable, so it went on offline under that id.
    assert resumed.trainer.logger.version == f"{run_id}-offline"
    assert resumed.trainer.current_epoch == 2
