"""Item 7: offline W&B makes no network connection; an online run whose server cannot be reached goes
offline after one probe (documented in experiments.tracking.WandbLogger) and the training completes."""

import os
import socket
import subprocess
import sys
import threading

import pytest
from refusing_wandb import refusing_server

from experiments.cli import CONFIGS

TINY = [sys.executable, "-m", "experiments.cli", "fit", "--model", "FineTuning", "--model.backbone", "tiny_cnn",
        "--model.pretrained", "false", "--data", "SyntheticDataModule", "--trainer.max_epochs", "1",
        "--trainer.enable_progress_bar", "false", "-c", str(CONFIGS / "logger" / "wandb.yaml"),
        "--trainer.logger.init_args.save_dir", "runs"]  # fmt: skip
DUMMY_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a real key


class Listener:
    """A loopback TCP server that counts connections and never answers (a server that hangs)."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted, self.held = 0, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(connection)

    def close(self):
        self.server.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


def run(tmp_path, env: dict[str, str | None], *extra: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([*TINY, *extra], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)


def offline_run_files(tmp_path) -> list:
    return list((tmp_path / "runs").rglob("offline-run-*/*.wandb"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "env",
    [{"WANDB_MODE": "offline", "WANDB_API_KEY": DUMMY_KEY}, {"WANDB_MODE": None, "WANDB_API_KEY": None}],
    ids=["WANDB_MODE=offline", "no-credentials"],
)
def test_offline_makes_no_connection(env, listener, tmp_path):
    done = run(tmp_path, {**env, "WANDB_BASE_URL": f"http://127.0.0.1:{listener.port}", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert offline_run_files(tmp_path), "no offline W&B run was written"
    assert listener.accepted == 0


@pytest.mark.slow
@pytest.mark.parametrize("server", ["closed-port", "never-answers"])
def test_unreachable_server_goes_offline_within_the_connect_timeout(server, listener, tmp_path):
    url = f"http://127.0.0.1:{closed_port() if server == 'closed-port' else listener.port}"
    done = run(tmp_path, {"WANDB_MODE": None, "WANDB_API_KEY": DUMMY_KEY, "WANDB_BASE_URL": url})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"W&B could not start online, the server is unreachable within 5 s ({url}" in done.stderr
    assert "wandb sync" in done.stderr and offline_run_files(tmp_path)
    assert listener.accepted == (1 if server == "never-answers" else 0)  # one probe, no W&B retry loop


@pytest.mark.slow
def test_a_failed_wandb_init_falls_back_to_offline(tmp_path):
    with refusing_server() as server:
        env = {"WANDB_MODE": None, "WANDB_API_KEY": DUMMY_KEY, "WANDB_BASE_URL": server.url}
        done = run(tmp_path, env, "--trainer.logger.init_args.init_timeout", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "W&B could not start online, wandb.init failed" in done.stderr and "401" in done.stderr
    assert offline_run_files(tmp_path)
    # W&B's start-up asks 16 times (wandb 0.31) and takes the 401 as final; a retry loop would ask on and on.
    assert 0 < server.requests < 50, server.requests


def test_the_server_is_the_environments_or_the_one_wandb_login_saved(tmp_path, monkeypatch):
    from experiments.tracking import wandb_base_url

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    assert wandb_base_url() == "https://api.wandb.ai"
    (tmp_path / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    assert wandb_base_url() == "https://wandb.example.org"  # `wandb login --host`
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert wandb_base_url() == "http://127.0.0.1:9"


@pytest.mark.slow
def test_a_run_started_under_another_processes_wandb_service_writes_into_its_own_folder(tmp_path, request):
    """A process that ran W&B (a notebook, `transfer ablate`, pytest) leaves WANDB_SERVICE in its environment, so
    a run it launches logs through that process's W&B service, whose working directory is not the run's."""
    import wandb

    if "WANDB_SERVICE" not in os.environ:  # as before the test afterwards
        request.addfinalizer(lambda: os.environ.pop("WANDB_SERVICE", None))
    (tmp_path / "parent").mkdir()
    wandb.init(mode="offline", dir=tmp_path / "parent", project="parent").finish()
    if "WANDB_SERVICE" not in os.environ:  # W&B sets it when it starts this process's service
        pytest.fail("this process's W&B service left no WANDB_SERVICE")  # fmt: skip
    (tmp_path / "child").mkdir()
    done = run(tmp_path / "child", {"WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert offline_run_files(tmp_path / "child"), "the run's W&B files went elsewhere"
