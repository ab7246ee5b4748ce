from functools import partial

import pytest
import torch
from lightning import Callback, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from support import quiet_trainer

from callbacks.gradual_unfreezing import GradualUnfreezing
from datamodules import SyntheticDataModule
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.schedulers import WarmupLR


def data():
    return SyntheticDataModule(
        num_classes=4, num_samples=64, augment=False, preprocessing=backbone_preprocessing("tiny_cnn")
    )


def model(**kwargs):
    defaults = dict(
        backbone="tiny_cnn",
        pretrained=False,
        num_classes=4,
        lr_decay=0.5,
        optimizer=partial(torch.optim.AdamW, lr=0.01),
    )
    return FineTuning(**(defaults | kwargs))


trainer = partial(quiet_trainer, max_epochs=4, deterministic=True)


class Recorder(Callback):
    """Per training step: which groups are trainable, every group's lr, and the BN statistics of block1."""

    def __init__(self):
        self.trainable, self.lrs, self.block1_stats = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.trainable.append(tuple(all(p.requires_grad for p in g) for g in module.backbone.layer_groups()))
        self.block1_stats.append(module.backbone.block1[1].running_mean.clone())

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def test_schedule_head_first_then_one_group_per_stage():
    callback = GradualUnfreezing(epochs_per_stage=1)
    assert [callback.stage_at(e, 2) for e in range(4)] == [0, 1, 2, 2]
    assert [GradualUnfreezing(milestones=[2, 5]).stage_at(e, 3) for e in (0, 2, 4, 5, 9)] == [0, 1, 1, 2, 2]
    assert GradualUnfreezing(max_unfrozen=1).stage_at(10, 3) == 1
    with pytest.raises(ValueError, match="milestones"):
        GradualUnfreezing(milestones=[3, 1])


def test_groups_unfreeze_from_the_top_and_frozen_statistics_stay_put():
    recorder = Recorder()
    fit = trainer(GradualUnfreezing(epochs_per_stage=1), recorder, max_epochs=3)
    fit.fit(model(), datamodule=data())
    steps = len(recorder.trainable) // 3
    assert recorder.trainable[0] == (False, False)
    assert recorder.trainable[steps] == (False, True)  # epoch 1: the top group
    assert recorder.trainable[2 * steps] == (True, True)
    frozen_stats = recorder.block1_stats[: 2 * steps]
    assert all(torch.equal(frozen_stats[0], s) for s in frozen_stats), "a frozen group's BN statistics moved"
    assert not torch.equal(recorder.block1_stats[2 * steps], recorder.block1_stats[-1])  # they move once unfrozen
    assert len(fit.optimizers[0].param_groups) == 3  # every group there from step 0


@pytest.mark.parametrize(
    "scheduler",
    [
        partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=[0.005, 0.01, 0.02]),
        partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda step: 0.99**step),
        partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0),
        partial(WarmupLR, warmup=3),
    ],
    ids=["onecycle", "lambda", "plateau", "warmup_cosine"],
)
def test_every_scheduler_keeps_working_across_unfreezing(scheduler):
    recorder = Recorder()
    module = model(lr_scheduler=scheduler)
    trainer(GradualUnfreezing(epochs_per_stage=1), recorder, max_epochs=3).fit(module, datamodule=data())
    assert recorder.trainable[-1] == (True, True)
    assert all(len(step) == 3 for step in recorder.lrs)
    assert all(all(lr >= 0 for lr in step) for step in recorder.lrs)


def test_newly_unfrozen_group_warms_up_and_rates_are_restored():
    recorder = Recorder()
    fit = trainer(GradualUnfreezing(epochs_per_stage=1, warmup_steps=2), recorder, max_epochs=2)
    fit.fit(model(), datamodule=data())
    steps = len(recorder.lrs) // 2
    top = [step[1] for step in recorder.lrs[steps:]]  # backbone.1 during epoch 1
    assert top[0] == pytest.approx(0.005) and top[1] == pytest.approx(0.01) and top[2] == pytest.approx(0.01)
    assert fit.optimizers[0].param_groups[1]["lr"] == pytest.approx(0.01)  # the factor never sticks


def test_lr_monitor_names_each_group(tmp_path):
    fit = trainer(GradualUnfreezing(), LearningRateMonitor("epoch"), logger=CSVLogger(tmp_path), max_epochs=1)
    fit.fit(model(), datamodule=data())
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0]
    assert {"lr-AdamW/backbone.0", "lr-AdamW/backbone.1", "lr-AdamW/head"} <= set(header.split(","))


class StopAfterEpoch(Callback):
    """Interrupts a run at the end of an epoch, as a pre-empted job would be."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def train(tmp_path, recorder, stop_after=None, ckpt_path=None, scheduler=None):
    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    stop = [StopAfterEpoch(stop_after - 1)] if stop_after else []
    fit = trainer(
        GradualUnfreezing(epochs_per_stage=1), recorder, checkpoint, *stop, max_epochs=4, enable_checkpointing=True
    )
    module = model(lr_scheduler=scheduler)
    fit.fit(module, datamodule=data(), ckpt_path=ckpt_path, weights_only=True)
    return module, fit


@pytest.mark.parametrize("stop_after", [1, 2, 3], ids=["stage0", "middle_stage", "after_last_stage"])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, stop_after):
    scheduler = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=[0.005, 0.01, 0.02])
    full_recorder = Recorder()
    full, _ = train(tmp_path / "full", full_recorder, scheduler=scheduler)

    parts = Recorder()
    _, cut = train(tmp_path / "cut", parts, stop_after=stop_after, scheduler=scheduler)
    assert cut.current_epoch == stop_after  # really interrupted
    resumed, _ = train(tmp_path / "cut", parts, ckpt_path=str(tmp_path / "cut" / "last.ckpt"), scheduler=scheduler)

    assert parts.trainable == full_recorder.trainable
    assert torch.allclose(torch.tensor(parts.lrs), torch.tensor(full_recorder.lrs), rtol=1e-9, atol=0)
    for (name, a), b in zip(full.named_parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
        assert a.requires_grad == b.requires_grad, name
