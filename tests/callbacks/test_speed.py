import pytest
import torch
from lightning import Callback, seed_everything
from support import quiet_trainer

from callbacks import Speed
from datamodules import SyntheticDataModule
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing


class Losses(Callback):
    def __init__(self):
        self.losses, self.layouts = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.layouts.append(batch["pixel_values"].is_contiguous(memory_format=torch.channels_last))


def fit(**speed):
    seed_everything(0)
    data = SyntheticDataModule(
        num_samples=32, batch_size=8, augment=False, preprocessing=backbone_preprocessing("tiny_cnn")
    )
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
    losses = Losses()
    quiet_trainer(losses, Speed(**speed), max_epochs=1, deterministic=not speed.get("compile")).fit(model, data)
    return model, losses


def test_channels_last_changes_the_layout_not_the_losses():
    plain, reference = fit()
    model, fast = fit(channels_last=True)
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and all(fast.layouts)
    assert not any(reference.layouts)
    assert fast.losses == pytest.approx(reference.losses, abs=1e-5)


@pytest.mark.slow
def test_compile_keeps_the_losses_and_the_checkpoint_keys():
    plain, reference = fit()
    model, compiled = fit(compile=True)
    assert model.backbone._compiled_call_impl is not None
    assert compiled.losses == pytest.approx(reference.losses, abs=1e-4)
    assert model.state_dict().keys() == plain.state_dict().keys()  # no `_orig_mod.` prefixes
