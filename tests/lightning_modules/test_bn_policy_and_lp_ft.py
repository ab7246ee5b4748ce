from functools import partial

import pytest
import torch
from lightning import Callback
from support import quiet_trainer
from torch import nn

from callbacks.gradual_unfreezing import GradualUnfreezing
from datamodules import SyntheticDataModule
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.linear_probe import fit_linear_probe


def data():
    return SyntheticDataModule(num_classes=4, num_samples=96, preprocessing=backbone_preprocessing("tiny_cnn"))


trainer = quiet_trainer


def fit(model, *callbacks, **kwargs):
    fitted = trainer(*callbacks, **kwargs)
    fitted.fit(model, datamodule=data())
    return fitted


def snapshot(norm):
    return {k: v.clone() for k, v in norm.state_dict().items()}


@pytest.mark.parametrize(
    ("policy", "statistics_move", "affine_moves"),
    [("train", True, True), ("eval", False, True), ("freeze", False, False)],
)
def test_bn_policy_on_the_statistics_themselves(policy, statistics_move, affine_moves):
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, bn_policy=policy)
    norm, conv = model.backbone.block2[1], model.backbone.block2[0]
    before, conv_before = snapshot(norm), conv.weight.clone()
    fit(model)
    after = snapshot(norm)
    assert (not torch.equal(before["running_mean"], after["running_mean"])) == statistics_move
    assert (not torch.equal(before["running_var"], after["running_var"])) == statistics_move
    assert (not torch.equal(before["weight"], after["weight"])) == affine_moves
    assert not torch.equal(conv_before, conv.weight), "the convolutions train under every policy"


def test_freeze_policy_survives_gradual_unfreezing():
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, bn_policy="freeze")
    fit(model, GradualUnfreezing(epochs_per_stage=1), max_epochs=3)
    assert model.backbone.block1[0].weight.requires_grad  # its group was unfrozen
    assert not any(
        p.requires_grad for norm in (model.backbone.block1[1], model.backbone.block2[1]) for p in norm.parameters()
    )


def test_linear_probe_fits_separable_features_exactly():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=generator) * 4
    labels = torch.arange(60) % 3
    features = centers[labels] + torch.randn(60, 8, generator=generator) * 0.3
    head = nn.Linear(8, 3)
    assert fit_linear_probe(head, features, labels) == 1.0
    weight = head.weight.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(features @ weight.T + head.bias.detach(), labels) + 1e-3 * weight.square().sum()
    (gradient,) = torch.autograd.grad(loss, weight)
    assert gradient.abs().max() < 1e-3, "L-BFGS stopped far from the optimum"


class HeadAtStart(Callback):
    def on_train_start(self, trainer, module):
        self.head = module.head.weight.detach().clone()


def test_lp_ft_starts_fine_tuning_from_a_probed_head(tmp_path):
    model = FineTuning(
        backbone="tiny_cnn",
        pretrained=False,
        num_classes=4,
        head_init="linear_probe",
        feature_cache_dir=str(tmp_path),
        optimizer=partial(torch.optim.SGD, lr=0.0),
    )
    initial = model.head.weight.detach().clone()
    probe = HeadAtStart()
    fit(model, probe, max_epochs=1)
    assert not torch.equal(initial, probe.head), "the head was not fitted before training"
    assert torch.equal(probe.head, model.head.weight), "lr 0: fine-tuning kept the probed head"
    assert list(tmp_path.glob("*.pt")), "the probe's features went through the feature cache"


def test_zero_head_init_starts_from_uniform_predictions_and_learns():
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, head_init="zero", head_dropout=0.1)
    assert not model.linear_head.weight.any() and not model.linear_head.bias.any()
    model.eval()
    assert not model({"pixel_values": torch.randn(2, 3, 16, 16)}).any()
    fit(model, max_epochs=1)
    assert model.linear_head.weight.any(), "the zero head trained"


def test_lp_ft_does_not_refit_the_head_on_resume(tmp_path):
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, head_init="linear_probe")
    fit(model, max_epochs=1).save_checkpoint(tmp_path / "last.ckpt")
    resumed = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, head_init="linear_probe")
    probe = HeadAtStart()
    trainer(probe).fit(resumed, datamodule=data(), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(probe.head, model.head.weight)


def test_default_bn_policy_keeps_pretrained_statistics_and_learns_random_ones(tmp_path):
    assert FineTuning(backbone="tiny_cnn", pretrained=False).bn_policy == "train"
    torch.save(FineTuning(backbone="tiny_cnn", pretrained=False).backbone.state_dict(), tmp_path / "w.pt")
    assert FineTuning(backbone="tiny_cnn", pretrained=False, weights=str(tmp_path / "w.pt")).bn_policy == "eval"
    assert FineTuning(backbone="tiny_cnn", pretrained=False, bn_policy="freeze").bn_policy == "freeze"
