"""EMA of the weights as a config piece: checkpoints hold the average, and the test after fit measures it."""

import json

import pytest
import torch
from support import TINY_RUN

from experiments.cli import CONFIGS, cli_main
from lightning_modules import FineTuning

EMA = ["-c", str(CONFIGS / "trainer" / "ema.yaml")]


def test_the_test_after_fit_measures_the_averaged_weights_the_checkpoint_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *TINY_RUN, *EMA, "--trainer.max_epochs", "2", "--checkpoint.dirpath", "ck",
                    "--test_after_fit", "true"])  # fmt: skip
    results = json.loads((tmp_path / "runs" / "csv" / "version_0" / "results.json").read_text())
    best = torch.load(results["best_checkpoint"], weights_only=True)
    assert {"current_model_state", "averaging_state"} <= best.keys()
    average, current = best["state_dict"], best["current_model_state"]
    assert any(not torch.equal(average[k], current[k]) for k in average)  # averaging happened

    def test_loss(state):
        model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
        model.load_state_dict(state)
        (metrics,) = cli.trainer.test(model, datamodule=cli.datamodule, verbose=False)
        return metrics["test/loss"]

    assert results["test"]["test/loss"] == pytest.approx(test_loss(average), abs=1e-6)
    assert results["test"]["test/loss"] != pytest.approx(test_loss(current), abs=1e-6)
