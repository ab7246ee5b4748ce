"""Item 11: a NaN/inf loss stops the run at that step naming the step and the term; checkpoints stay finite."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from support import quiet_trainer

from datamodules import SyntheticDataModule
from experiments.cli import CONFIGS
from lightning_modules import Distillation, FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.finite import NonFiniteError


def data(**kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, preprocessing=backbone_preprocessing("tiny_mlp"), **kwargs)


def poisoned_teacher(path: Path) -> str:
    """A checkpoint of a run whose head went NaN: its logits, hence the KD loss, are NaN; labels are fine."""
    teacher = FineTuning(backbone="tiny_mlp", pretrained=False, num_classes=4)
    with torch.no_grad():
        teacher.head.weight[0, 0] = float("nan")
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, path)
    return str(path)


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def finite_everywhere(value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(finite_everywhere(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(finite_everywhere(v) for v in value)
    return True


def test_nan_kd_loss_stops_at_that_step_naming_the_term(tmp_path):
    model = Distillation(
        backbone="tiny_mlp", pretrained=False, num_classes=4, teacher_ckpt=poisoned_teacher(tmp_path / "t.ckpt")
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1)
    with pytest.raises(NonFiniteError, match=r"global step 0 \(epoch 0, batch 0\): loss=nan, kd_loss=nan\.") as raised:
        trainer.fit(model, datamodule=data())
    assert "ce_loss" not in str(raised.value) and trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the NaN step updated weights"


def test_divergence_stops_at_the_step_and_every_checkpoint_is_finite(tmp_path):
    seed_everything(0)
    model = FineTuning(
        backbone="tiny_mlp", pretrained=False, num_classes=4, optimizer=lambda p: torch.optim.SGD(p, lr=1e25)
    )
    every_step = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True)
    losses = Losses()
    trainer = quiet_trainer(every_step, losses, max_epochs=50, enable_checkpointing=True, limit_train_batches=2)
    with pytest.raises(NonFiniteError) as raised:
        trainer.fit(model, datamodule=data())
    # seeded: the weights grow huge but finite after step 0 and the logits overflow at step 1
    assert f"non-finite loss at global step {trainer.global_step} " in str(raised.value)
    assert len(losses.losses) == trainer.global_step and all(map(torch.isfinite, torch.tensor(losses.losses)))
    written = sorted(tmp_path.glob("*.ckpt"))
    assert written, "no checkpoint before divergence: the test proves nothing"
    for path in written:  # weights and optimizer state (ModelCheckpoint's own `kth_value` starts at inf)
        checkpoint = torch.load(path, weights_only=True)
        assert finite_everywhere([checkpoint["state_dict"], checkpoint["optimizer_states"]]), f"{path.name} has NaN/inf"


@pytest.mark.slow
def test_cli_run_with_nan_loss_exits_non_zero_naming_step_and_term(tmp_path):
    args = [
        sys.executable, "-m", "experiments.cli", "fit",
        "--model", "Distillation", "--model.backbone", "tiny_mlp", "--model.pretrained", "false",
        "--model.teacher_ckpt", poisoned_teacher(tmp_path / "t.ckpt"),
        "--data", "SyntheticDataModule", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "-c", str(CONFIGS / "logger" / "csv.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "NonFiniteError: non-finite loss at global step 0 (epoch 0, batch 0): loss=nan, kd_loss=nan." in done.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_a_checkpoint_of_non_finite_weights_is_refused_and_not_written(tmp_path):
    model = FineTuning(backbone="tiny_mlp", pretrained=False, num_classes=4)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, datamodule=data())
    trainer.save_checkpoint(tmp_path / "finite.ckpt")
    with torch.no_grad():
        model.backbone.fc2[0].bias[3] = float("inf")
    with pytest.raises(NonFiniteError, match=r"checkpoint state_dict: tensor backbone.fc2.0.bias holds NaN or inf"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["finite.ckpt"]
