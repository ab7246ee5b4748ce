"""Item 8: with WANDB_API_KEY and HF_TOKEN set, no file a run writes (checkpoints, config, metadata, logs,
W&B run folder, caches) and neither stdout nor stderr contains either value, offline or after an online
W&B start that failed."""

import os
import subprocess
import sys

import pytest
from refusing_wandb import refusing_server
from support import GLUE_FIXTURES

from experiments.cli import CONFIGS

WANDB_KEY = "wandbsentinel" + "7f3a9c1e5b" * 2 + "q9"  # 40 characters, like a real key
HF_TOKEN = "hf_sentinelTOKEN" + "x1y2z3w4v5" * 2
FRAGMENTS = [s.encode() for s in (WANDB_KEY, HF_TOKEN, WANDB_KEY[-12:], HF_TOKEN[-12:], WANDB_KEY[:16])]
COMMON = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--test_after_fit", "true",
          "-c", str(CONFIGS / "logger" / "wandb.yaml"), "--trainer.logger.init_args.save_dir", "runs"]  # fmt: skip
RUNS = {
    "vision": ["--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
               "--data", "SyntheticDataModule"],
    "text": ["-c", str(CONFIGS / "glue" / "rte.yaml"), "--model.init_args.backbone", "tiny_bert",
             "--model.init_args.pretrained", "false", "--data.init_args.root", str(GLUE_FIXTURES)],
}  # fmt: skip


@pytest.fixture
def refusing_server_url():
    with refusing_server() as server:
        yield server.url


def leaks(data: bytes) -> list[bytes]:
    return [fragment for fragment in FRAGMENTS if fragment in data]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "wandb"), [("vision", "offline"), ("text", "offline"), ("vision", "online-refused")])
def test_no_file_and_no_output_holds_a_secret(task, wandb, tmp_path, refusing_server_url):
    home = tmp_path / "home"  # W&B's and HF's own folders (~/.config/wandb, ~/.cache) land in here too
    env = {**os.environ, "WANDB_API_KEY": WANDB_KEY, "HF_TOKEN": HF_TOKEN, "HOME": str(home), "WANDB_MODE": "offline",
           "TRANSFER_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp")}  # fmt: skip
    (tmp_path / "tmp").mkdir()
    if wandb == "online-refused":
        env.pop("WANDB_MODE")
        env["WANDB_BASE_URL"] = refusing_server_url
    done = subprocess.run([sys.executable, "-m", "experiments.cli", "fit", *RUNS[task], *COMMON], cwd=tmp_path,
                          env=env, capture_output=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    names = {p.name for p in files}
    assert {"config.yaml", "last.ckpt", "results.json", "run_metadata.json"} <= names  # what the run wrote ...
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "debug-internal.log" for p in files)
    if wandb == "online-refused":
        assert b"W&B could not start online, wandb.init failed" in done.stderr
    leaked = {str(p.relative_to(tmp_path)): leaks(p.read_bytes()) for p in files}
    assert not {path: found for path, found in leaked.items() if found}  # ... and none of it holds a secret
    assert not leaks(done.stdout) and not leaks(done.stderr)
