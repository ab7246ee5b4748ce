import math
from functools import partial

import pytest
import torch
from lightning import Callback, seed_everything
from support import quiet_trainer
from torch import nn

from datamodules import SyntheticDataModule
from lightning_modules import FeatureExtraction, FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.feature_cache import FeatureEncoder
from lightning_modules.schedulers import WarmupLR


def data(num_classes=4, **kwargs):
    return SyntheticDataModule(num_classes=num_classes, preprocessing=backbone_preprocessing("tiny_cnn"), **kwargs)


trainer = quiet_trainer


def bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


class ModeProbe(Callback):
    """Records, at every training step, whether any frozen module was in training mode."""

    def __init__(self):
        self.frozen_in_train_mode = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        frozen = [
            m for m in module.modules() if list(m.parameters()) and not any(p.requires_grad for p in m.parameters())
        ]
        self.frozen_in_train_mode.append(any(m.training for m in frozen))


@pytest.mark.parametrize("strategy", [FeatureExtraction, FineTuning])
def test_every_strategy_fits_with_fast_dev_run(strategy):
    model = strategy(backbone="tiny_cnn", pretrained=False, num_classes=4)
    trainer(fast_dev_run=2).fit(model, datamodule=data())
    assert trainer(fast_dev_run=1).test(model, datamodule=data())[0]["test/acc"] >= 0


def test_feature_extraction_is_frozen_frozen_and_head_only():
    model = FeatureExtraction(backbone="tiny_cnn", pretrained=False, num_classes=4)
    before = bn_state(model.backbone)
    weights = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    probe = ModeProbe()
    fit = trainer(callbacks=[probe])
    fit.fit(model, datamodule=data())
    optimizer_params = {id(p) for g in fit.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in model.head.parameters()}
    assert all(torch.equal(before[k], v) for k, v in bn_state(model.backbone).items()), "BN statistics moved"
    assert all(torch.equal(weights[k], v) for k, v in model.backbone.state_dict().items())
    assert probe.frozen_in_train_mode and not any(probe.frozen_in_train_mode)


def test_fine_tuning_top_k_groups_freezes_the_rest_and_keeps_their_statistics():
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, trainable_groups=1)
    lower, upper = model.backbone.block1, model.backbone.block2
    assert not any(p.requires_grad for p in lower.parameters()) and all(p.requires_grad for p in upper.parameters())
    lower_stats, upper_stats = bn_state(lower), bn_state(upper)
    fit = trainer(callbacks=[ModeProbe()])
    fit.fit(model, datamodule=data())
    assert all(torch.equal(lower_stats[k], v) for k, v in bn_state(lower).items())
    assert not all(torch.equal(upper_stats[k], v) for k, v in bn_state(upper).items()), "trained group's BN must update"
    optimizer = fit.optimizers[0]
    assert [g["name"] for g in optimizer.param_groups] == ["backbone.0", "backbone.1", "head"]  # fixed set of groups
    assert not any(p in optimizer.state for p in lower.parameters()), "a frozen group has no optimizer state"
    assert all(p in optimizer.state for p in upper.parameters())


def test_fine_tuning_rejects_out_of_range_groups():
    with pytest.raises(ValueError, match="model.trainable_groups"):
        FineTuning(backbone="tiny_cnn", pretrained=False, trainable_groups=5)


def test_layer_wise_decay_and_head_rate():
    model = FineTuning(
        backbone="tiny_cnn",
        pretrained=False,
        num_classes=4,
        lr_decay=0.5,
        head_lr=0.01,
        optimizer=partial(torch.optim.SGD, lr=0.1),
    )
    optimizer = model.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone.0": 0.05, "backbone.1": 0.1, "head": 0.01})
    assert all("lr_scale" not in g for g in optimizer.param_groups)


def test_scheduler_gets_total_steps_and_keeps_discriminative_rates():
    model = FineTuning(
        backbone="tiny_cnn",
        pretrained=False,
        num_classes=4,
        lr_decay=0.5,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=partial(WarmupLR, warmup=2),
    )
    fit = trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    fit.fit(model, datamodule=data())
    scheduler = fit.lr_scheduler_configs[0].scheduler
    assert fit.lr_scheduler_configs[0].interval == "step"
    assert scheduler.last_epoch == 6  # stepped once per batch, 2 epochs x 3 batches
    lrs = [g["lr"] for g in fit.optimizers[0].param_groups]
    assert lrs[0] == pytest.approx(lrs[1] * 0.5)  # the schedule scales every group alike
    assert lrs[1] == pytest.approx(0.0, abs=1e-12)  # cosine reached its end


def test_warmup_schedule_shape():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupLR(optimizer, total_steps=10, warmup=2, decay="cosine")
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    with pytest.raises(ValueError, match="total_steps"):
        WarmupLR(optimizer)


def test_metrics_use_stage_slash_name():
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=6)
    fit = trainer(max_epochs=1)
    fit.fit(model, datamodule=data(num_classes=6, num_samples=96))
    logged = set(fit.logged_metrics)
    assert {"train/loss", "val/loss", "val/acc", "val/acc_top5", "train/acc"} <= logged
    assert not any(k.endswith(("_step", "_epoch")) for k in logged)


def test_same_seed_same_losses_other_seed_differs():
    def run(seed):
        seed_everything(seed)
        model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
        trainer(max_epochs=1, deterministic=True).fit(model, datamodule=data())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = run(1)
    assert torch.equal(first, run(1))
    assert not torch.equal(first, run(2))


def test_cached_features_give_the_same_logits_as_the_backbone(tmp_path):
    model = FeatureExtraction(
        backbone="tiny_cnn",
        pretrained=False,
        num_classes=4,
        cache_features=True,
        feature_cache_dir=str(tmp_path),
    )
    datamodule = data(augment=False)
    trainer(max_epochs=1).fit(model, datamodule=datamodule)
    model.eval()
    cached = next(iter(datamodule.val_dataloader()))
    assert "features" in cached and "pixel_values" not in cached
    images = next(iter(datamodule.eval_dataloader("val")))
    with torch.no_grad():
        assert torch.allclose(model(cached), model({"pixel_values": images["pixel_values"]}), atol=1e-5)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # train and val


def test_feature_cache_is_reused_from_disk_and_keyed_by_weights(tmp_path):
    datamodule = data(augment=False)
    datamodule.setup("fit")
    backbone = FeatureExtraction(backbone="tiny_cnn", pretrained=False, num_classes=4).backbone
    first = FeatureEncoder(backbone, "tiny_cnn", datamodule.fingerprint, str(tmp_path))
    features = first("train", datamodule.eval_dataloader("train"))
    again = FeatureEncoder(backbone, "tiny_cnn", datamodule.fingerprint, str(tmp_path))
    assert torch.equal(again("train", datamodule.eval_dataloader("train")), features)
    assert first.extracted == ["train"] and again.extracted == []
    with torch.no_grad():
        backbone.block1[0].weight.add_(1.0)
    changed = FeatureEncoder(backbone, "tiny_cnn", datamodule.fingerprint, str(tmp_path))
    assert changed.key("train") != first.key("train")
