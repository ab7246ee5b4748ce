"""Item 6: a bad config exits 2 within seconds, names the key, path or line, and creates no run folder and no
W&B run; a YAML tag that would run code is refused without running it."""

import importlib
import os
import re
import subprocess
import sys

import pytest

from experiments.cli import cli_main
from experiments.entry import COMMANDS

TINY = [
    "fit",
    "--model",
    "FineTuning",
    "--model.backbone",
    "tiny_cnn",
    "--model.pretrained",
    "false",
    "--data",
    "SyntheticDataModule",
]  # fmt: skip  (the default logger: W&B, offline, into ./runs)
MARKER = "PWNED"
CASES = {
    "unknown-key": ("trainer:\n  max_epochs: 1\n  max_epocks: 2\n", "'trainer.max_epocks'"),
    "wrong-type": ("model:\n  init_args:\n    head_dropout: lots\n", 'key "head_dropout"'),
    "malformed": ("trainer:\n  max_epochs: 2\n  limit_train_batches: [1, 2\n", "{path}, line 4, column 1"),
    "python-tag": (f"trainer:\n  max_epochs: !!python/object/apply:os.system ['touch {MARKER}']\n",
                   "{path}, line 2, column 15: could not determine a constructor for the tag"),
    "top-level-tag": (f"!!python/object/apply:os.system ['touch {MARKER}']\n", "{path}, line 1, column 1"),
    "missing-file": (None, "{path}"),
    "nested-file": ("model: pieces/model.yaml\n", "{nested}, line 2, column 1"),  # a piece an experiment names
    "missing-data-root": ("data:\n  class_path: CIFAR10DataModule\n  init_args:\n    root: no/such/cifar\n",
                          "data.root"),
}  # fmt: skip


def write_case(folder, name):
    text, named = CASES[name]
    path, nested = folder / "experiment.yaml", folder / "pieces" / "model.yaml"
    if text is not None:
        path.write_text(text)
    if name == "nested-file":
        nested.parent.mkdir()
        nested.write_text("class_path: lightning_modules.FineTuning\n  init_args: {backbone: tiny_cnn}\n")
    return str(path), named.format(path=path, nested=nested)


def nothing_created(folder) -> bool:
    """No run folder, no W&B run (offline ones go under the run folder too), no payload marker."""
    return not (folder / "runs").exists() and not (folder / "wandb").exists() and not (folder / MARKER).exists()


@pytest.mark.parametrize("case", CASES)
def test_bad_config_exits_2_naming_what_is_wrong_and_creates_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path, named = write_case(tmp_path, case)
    with pytest.raises(SystemExit) as raised:
        cli_main([*TINY, "-c", path])
    assert raised.value.code == 2
    assert named in capsys.readouterr().err
    assert nothing_created(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["malformed", "python-tag", "missing-data-root"])  # one per stage: YAML, parse, setup
def test_bad_config_process_exits_2_with_the_message_alone_and_creates_nothing(case, tmp_path):
    """As a process: exit status 2, the message without a traceback, nothing written (no timing: a loaded machine
    would make a wall-clock bound fail for the wrong reason; the subprocess timeout only guards a hang)."""
    path, named = write_case(tmp_path, case)
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "experiments.cli", *TINY, "-c", path], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and named in done.stderr
    assert "Traceback" not in done.stderr
    assert nothing_created(tmp_path)


@pytest.mark.parametrize("option", ["--trainer.max_epoch", "--trainer.max_ep"])
def test_an_abbreviated_option_is_refused_not_expanded(option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as raised:
        cli_main([*TINY, option, "1"])
    assert raised.value.code == 2 and f"unrecognized arguments: {option} 1" in capsys.readouterr().err
    assert nothing_created(tmp_path)


SUBCOMMANDS = {**{name: module for name, (module, _) in COMMANDS.items()}, "predict": "experiments.predict"}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_the_subcommands_refuse_abbreviated_options_too(command, capsys):
    abbreviation = "--outp" if command == "merge" else "--ou"  # of --output, and of --out everywhere else
    with pytest.raises(SystemExit) as raised:
        required = ["--model", "m", "--inputs", "i"] if command == "predict" else []  # --out is optional there
        importlib.import_module(SUBCOMMANDS[command]).main([*required, abbreviation, "somewhere"])
    error = capsys.readouterr().err  # not expanded: either refused as such, or the full option is still missing
    assert raised.value.code == 2
    assert f"unrecognized arguments: {abbreviation}" in error or re.search(r"required: .*--out", error), error
