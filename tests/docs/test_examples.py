"""The worked examples of docs/extending.md run as written, and do what the guide says they do."""

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"


def run_example(name: str) -> tuple[dict, str]:
    """Run docs/examples/<name>.py as a script; its namespace and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        namespace = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    return namespace, printed.getvalue()


def test_the_own_strategy_example_pulls_the_backbone_towards_its_start():
    _, printed = run_example("own_strategy")
    free, pulled = map(float, re.search(r"moved ([\d.]+) without the pull, ([\d.]+) with it", printed).groups())
    assert 0 < pulled < free / 2


def test_the_own_datamodule_example_trains_and_tests_on_its_file():
    namespace, printed = run_example("own_datamodule")
    data = namespace["data"]
    assert data.class_names == ["dark", "bright"] and data.num_classes == 2
    assert len(data.datasets["train"]) + len(data.datasets["val"]) == 80 and len(data.datasets["test"]) == 40
    assert "'test/acc': 1.0" in printed  # the two classes differ in brightness by 120 levels


def test_the_own_backbone_example_registers_a_name_every_strategy_can_use():
    from lightning_modules.backbones import registered_backbones

    namespace, printed = run_example("own_backbone")
    assert "tv_resnet18" in registered_backbones()
    net = namespace["model"].backbone.net
    last_two = sum(p.numel() for stage in (net.layer3, net.layer4) for p in stage.parameters())
    assert printed.startswith(f"{last_two:,} of ")  # trainable_groups=2: the last two stages, not the rest


def test_the_own_weighting_example_weighs_each_task_as_configured():
    namespace, printed = run_example("own_weighting")
    metrics = namespace["trainer"].callback_metrics
    assert float(metrics["train/fine/weight"]) == 1.0 and float(metrics["train/coarse/weight"]) == 0.25
    with pytest.raises(ValueError, match="must name the tasks"):
        namespace["FixedWeights"]({"fine": 1.0}).setup({"fine": False, "coarse": False})


def test_the_example_study_of_the_own_strategy_passes_the_real_parser(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.entry", "ablate", str(EXAMPLES / "l2sp_digits.yaml"), "--dry-run",
         "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("l2sp ") == 2 and done.stdout.count("fine_tuning ") >= 2  # one row per seed
