import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from support import quiet_trainer

from callbacks.model_checkpoint import ModelCheckpoint
from datamodules import SyntheticDataModule
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing


def fit(checkpoint_class, tmp_path, **kwargs):
    data = SyntheticDataModule(num_samples=32, batch_size=8, preprocessing=backbone_preprocessing("tiny_cnn"))
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
    # The best "epoch" (mode min) is the first: no top-k checkpoint is saved after it.
    checkpoint = checkpoint_class(dirpath=tmp_path, monitor="epoch", mode="min", save_last=True, **kwargs)
    trainer = quiet_trainer(checkpoint, max_epochs=3, enable_checkpointing=True)
    trainer.fit(model, datamodule=data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    return last["global_step"], trainer.global_step


@pytest.mark.parametrize("on_train_epoch_end", [False, True])
def test_last_ckpt_is_the_latest_state_after_the_monitored_metric_stops_improving(tmp_path, on_train_epoch_end):
    saved, final = fit(ModelCheckpoint, tmp_path, save_on_train_epoch_end=on_train_epoch_end)
    assert saved == final == 9


def test_lightning_alone_leaves_last_ckpt_at_the_best_step(tmp_path):
    """Why the subclass exists; if Lightning changes this, the subclass can go."""
    saved, final = fit(LightningModelCheckpoint, tmp_path)
    assert saved == 3 and final == 9
