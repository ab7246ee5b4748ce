"""Item 12: strategy invariants through the real CLI. Feature extraction leaves the backbone's weights and
BatchNorm statistics bit-identical; a distillation teacher is unchanged and in eval mode after fit;
`trainer.gradient_clip_val` bounds the total gradient norm of every step.

Unit-level versions, with a plain Trainer: tests/lightning_modules/test_strategies.py
(test_feature_extraction_is_frozen_frozen_and_head_only) and tests/lightning_modules/test_distillation.py
(test_teacher_is_frozen_eval_out_of_optimizer_and_out_of_checkpoints)."""

import pytest
import torch
from lightning import Callback

from experiments.cli import CONFIGS, cli_main
from lightning_modules import FineTuning

TINY = ["--model.backbone", "tiny_cnn", "--model.pretrained", "false", "--data", "SyntheticDataModule",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", "runs"]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(cli) -> None:
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_feature_extraction_leaves_backbone_weights_and_bn_statistics_bit_identical(in_tmp):
    cli = cli_main(["--model", "FeatureExtraction", *TINY, "--data.num_workers", "2"], run=False)
    backbone, head = snapshot(cli.model.backbone), snapshot(cli.model.head)
    assert any("running_mean" in k for k in backbone)  # tiny_cnn has BatchNorm: the statistics are checked too
    fit(cli)
    after = cli.model.backbone.state_dict()
    assert backbone.keys() == after.keys()
    assert [k for k, v in backbone.items() if not torch.equal(v, after[k])] == []
    assert any(not torch.equal(v, cli.model.head.state_dict()[k]) for k, v in head.items()), "nothing trained"


def test_distillation_teacher_is_unchanged_and_in_eval_mode_after_fit(in_tmp):
    teacher = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
    teacher.train()  # a BatchNorm teacher in training mode would update its statistics on every batch
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, in_tmp / "t.ckpt")
    cli = cli_main(["--model", "Distillation", *TINY, "--model.teacher_ckpt", "t.ckpt"], run=False)
    before = snapshot(cli.model.teacher)
    fit(cli)
    assert cli.trainer.global_step > 0
    assert not cli.model.teacher.training and not any(m.training for m in cli.model.teacher.modules())
    after = cli.model.teacher.state_dict()
    assert [k for k, v in before.items() if not torch.equal(v, after[k])] == []


class GradientNorms(Callback):
    """Total gradient norm of each step before clipping (Lightning's hook runs before it clips) and as the
    optimizer used it (after the step: the gradients are zeroed only at the start of the next one)."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def total(optimizer) -> float:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self.total(trainer.optimizers[0]))

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.before.append(self.total(optimizer))


@pytest.mark.parametrize("clip", [None, 0.05])
def test_gradient_clip_val_bounds_the_total_gradient_norm(clip, in_tmp):
    extra = ["--trainer.gradient_clip_val", str(clip)] if clip is not None else []
    cli = cli_main(["--model", "FineTuning", *TINY, "--model.optimizer.lr", "0.1", *extra], run=False)
    norms = GradientNorms()
    cli.trainer.callbacks.append(norms)
    fit(cli)
    assert len(norms.before) == len(norms.after) == cli.trainer.global_step > 0
    limit = clip if clip is not None else 0.05
    assert any(b > limit for b in norms.before), "no step exceeded the limit: the test proves nothing"
    if clip is None:
        assert norms.after == norms.before
    else:
        for before, after in zip(norms.before, norms.after, strict=True):
            assert after <= clip * (1 + 1e-5), f"norm {after} after clipping to {clip}"
            assert after == pytest.approx(min(before, clip), rel=1e-5)  # scaled down, direction kept
