"""`transfer wise-ft` and `transfer soup` end to end on tiny runs: end points, identical soups, errors."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from experiments.cli import CONFIGS, cli_main
from experiments.soup import main as soup
from experiments.wise_ft import main as wise_ft
from lightning_modules.weight_space import interpolate

CONFIG = {
    "model": {"class_path": "lightning_modules.FineTuning", "init_args": {"backbone": "tiny_cnn", "pretrained": False}},
    "data": {
        "class_path": "datamodules.SyntheticDataModule",
        "init_args": {"num_samples": 64, "num_test_samples": 16, "batch_size": 16, "image_size": 32},
    },
    "trainer": {"enable_progress_bar": False},
}
SHIFT = ["--set", "data.init_args.corruptions=[contrast]", "--set", "data.init_args.severities=[1]"]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Two fine-tuned runs of one architecture (different seeds and rates) and the config that made them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    config = ["-c", "run.yaml", "-c", str(CONFIGS / "trainer" / "cpu.yaml")]
    for name, seed, lr in (("a", 1, "0.01"), ("b", 2, "0.003")):
        cli_main(["fit", *config, "-c", str(CONFIGS / "logger" / "csv.yaml"), "--seed_everything", str(seed),
                  "--model.init_args.optimizer.init_args.lr", lr, "--trainer.max_epochs", "2",
                  "--checkpoint.dirpath", name])  # fmt: skip
    return config


def evaluated_alone(config, ckpt):
    cli = cli_main(["validate", *config, "--ckpt_path", ckpt, "--trainer.logger", "false"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    cli = cli_main(["test", *config, "--ckpt_path", ckpt, "--trainer.logger", "false"])
    return metrics | {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def rows(folder):
    return json.loads((folder / "results.json").read_text())["rows"]


def test_wise_ft_reproduces_its_end_points_and_writes_the_mix_chosen_on_validation(runs, tmp_path):
    assert wise_ft(["a/last.ckpt", "b/last.ckpt", *runs, "--alphas", "0", "0.5", "1", "--out", "wise"]) == 0
    assert not Path("config.yaml").exists() and Path("wise/config.yaml").is_file()  # the CLI's files go to --out
    by_alpha = {row["alpha"]: row["metrics"] for row in rows(tmp_path / "wise")}
    for alpha, ckpt in ((0.0, "a/last.ckpt"), (1.0, "b/last.ckpt")):
        expected = evaluated_alone(runs, ckpt)
        for name in ("val/acc", "val/loss", "test/acc", "test/loss"):
            assert by_alpha[alpha][name] == pytest.approx(expected[name], abs=1e-6), (alpha, name)
    chosen = max(by_alpha, key=lambda a: by_alpha[a]["val/score"])
    written = torch.load(tmp_path / "wise" / "wise_ft.ckpt", weights_only=True)
    assert written["made_from"]["alpha"] == chosen
    start, end = (torch.load(f"{x}/last.ckpt", weights_only=True)["state_dict"] for x in "ab")
    mix = interpolate(start, end, chosen)
    assert all(torch.equal(written["state_dict"][k], mix[k]) for k in mix)
    assert evaluated_alone(runs, "wise/wise_ft.ckpt")["val/score"] == pytest.approx(
        by_alpha[chosen]["val/score"], abs=1e-6
    )
    assert (tmp_path / "wise" / "wise_ft.png").stat().st_size > 0
    assert "| alpha 0.5 |" in (tmp_path / "wise" / "results.md").read_text()


def test_wise_ft_tests_the_shift_sets_when_asked(runs, tmp_path):
    assert wise_ft(["a/last.ckpt", "b/last.ckpt", *runs, *SHIFT, "--alphas", "0.5", "--out", "wise"]) == 0
    (row,) = rows(tmp_path / "wise")
    assert {"test/contrast/1/acc", "test/corruptions/acc", "test/acc"} <= row["metrics"].keys()
    assert "test/corruptions/acc" in (tmp_path / "wise" / "results.md").read_text()


def test_a_soup_of_identical_checkpoints_scores_as_that_checkpoint_and_greedy_starts_from_the_best(runs, tmp_path):
    import shutil

    shutil.copy("a/last.ckpt", "a/copy.ckpt")
    assert soup(["a/last.ckpt", "a/copy.ckpt", *runs, "--out", "same"]) == 0
    ingredient, _, uniform, greedy = rows(tmp_path / "same")
    for name in ("val/acc", "test/acc", "test/loss"):
        assert uniform["metrics"][name] == pytest.approx(ingredient["metrics"][name], abs=1e-6)
        assert greedy["metrics"][name] == pytest.approx(ingredient["metrics"][name], abs=1e-6)

    assert soup(["a/last.ckpt", "b/last.ckpt", *runs, "--out", "two"]) == 0
    a, b, uniform, greedy = rows(tmp_path / "two")
    best = "a/last.ckpt" if a["metrics"]["val/score"] >= b["metrics"]["val/score"] else "b/last.ckpt"
    made = torch.load(tmp_path / "two" / "greedy_soup.ckpt", weights_only=True)["made_from"]
    assert made["ingredients"][0] == best
    assert greedy["metrics"]["val/score"] >= max(a["metrics"]["val/score"], b["metrics"]["val/score"]) - 1e-9
    assert uniform["name"].startswith("uniform_soup (2 of 2)")


def test_checkpoints_of_other_architectures_and_missing_files_are_named(runs, tmp_path, capsys):
    cli_main(["fit", *runs, "-c", str(CONFIGS / "logger" / "csv.yaml"), "--data.init_args.num_classes", "3",
              "--trainer.max_epochs", "1", "--checkpoint.dirpath", "three"])  # fmt: skip
    with pytest.raises(SystemExit):
        soup(["a/last.ckpt", "three/last.ckpt", *runs, "--out", "bad"])
    assert (
        "three/last.ckpt does not have the architecture of a/last.ckpt: head.weight is [3, " in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        wise_ft(["a/last.ckpt", "nope.ckpt", *runs, "--out", "bad"])
    assert "checkpoint: nope.ckpt does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        wise_ft(["a/last.ckpt", "b/last.ckpt", *runs, "--alphas", "1.5", "--out", "bad"])
    assert "--alphas must lie in [0, 1], got [1.5]" in capsys.readouterr().err


def test_a_soup_run_again_after_an_interruption_evaluates_only_what_it_had_not(runs, tmp_path, monkeypatch):
    """Each evaluation is kept in `--out/evaluations` under the weights' and config's hash: run again, the command
    reads them instead of testing every model again (minutes per model under the corruptions on a CPU)."""
    from lightning import Trainer

    evaluations = []
    validate = Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: evaluations.append(1) or validate(self, *a, **k))
    command = ["a/last.ckpt", "b/last.ckpt", *runs, "--out", "soup"]
    assert soup(command) == 0
    first, done = rows(tmp_path / "soup"), len(evaluations)
    assert done >= 3 and len(list((tmp_path / "soup" / "evaluations").glob("*.json"))) == done
    (tmp_path / "soup" / "results.json").unlink()  # as if stopped before the report
    assert soup(command) == 0
    assert len(evaluations) == done  # nothing evaluated again
    assert rows(tmp_path / "soup") == first
    other = ["--set", "data.init_args.num_test_samples=8"]  # another config: its own evaluations
    assert soup([*command, *other]) == 0
    assert len(evaluations) > done
