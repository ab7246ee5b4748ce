"""`transfer merge`: an adapter run's checkpoint -> a plain checkpoint with the same test metrics."""

import pytest
import torch
from support import TINY_RUN

from experiments.cli import cli_main
from experiments.merge import main as merge
from lightning_modules import FineTuning
from lightning_modules.frozen_base import FROZEN_BASE

LORA = ["--model.adapter", "peft.LoraConfig", "--model.adapter.r", "4", "--model.adapter.lora_alpha", "8"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def metrics_of(ckpt_path: str) -> dict[str, float]:
    cli = cli_main(["test", *TINY_RUN, "--ckpt_path", ckpt_path])
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_a_merged_checkpoint_tests_like_the_adapter_run_and_loads_as_plain_weights(in_tmp, capsys):
    cli_main(["fit", *TINY_RUN, *LORA, "--trainer.max_epochs", "2", "--checkpoint.dirpath", "checkpoints"])
    last = in_tmp / "checkpoints" / "last.ckpt"
    unmerged = metrics_of(str(last))

    assert merge([str(last), "--seed", "3", "--output", "merged.ckpt", "--peft", "adapter"]) == 0
    merged_file = in_tmp / "merged.ckpt"
    merged = torch.load(merged_file, weights_only=True)
    assert FROZEN_BASE not in merged and merged["hyper_parameters"]["adapter"] is None
    assert merged["merged_from"][FROZEN_BASE] == torch.load(last, weights_only=True)[FROZEN_BASE]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (in_tmp / "adapter").iterdir()}

    metrics = metrics_of(str(merged_file))
    assert metrics.keys() == unmerged.keys() and "test/acc" in metrics
    for name, value in unmerged.items():
        assert metrics[name] == pytest.approx(value, abs=1e-5), name

    plain = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, backbone_ckpt=str(merged_file))
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.equal(plain.backbone.state_dict()["block2.0.weight"], merged["state_dict"]["backbone.block2.0.weight"])


def test_merge_refuses_a_base_that_is_not_the_one_trained_on_and_a_plain_checkpoint(in_tmp, capsys):
    cli_main(["fit", *TINY_RUN, *LORA, "--trainer.max_epochs", "1", "--checkpoint.dirpath", "checkpoints"])
    with pytest.raises(SystemExit) as raised:
        merge(["checkpoints/last.ckpt", "--seed", "4"])  # another seed: another random base
    assert raised.value.code == 2
    assert "another frozen base: tiny_cnn (random init" in capsys.readouterr().err
    cli_main(["fit", *TINY_RUN, "--trainer.max_epochs", "1", "--checkpoint.dirpath", "plain"])
    with pytest.raises(SystemExit):
        merge(["plain/last.ckpt"])
    assert "is not an adapter run's checkpoint" in capsys.readouterr().err
