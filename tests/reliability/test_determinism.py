"""Same seed, same run: bit-identical weights and per-step losses, with worker processes loading data."""

import pytest
import torch
from lightning import Callback, seed_everything
from support import quiet_trainer

from datamodules import SyntheticDataModule
from lightning_modules import FineTuning


class Losses(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def train(seed: int, workers: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Two epochs of a tiny CNN with dropout on augmented synthetic images (crop + flip)."""
    seed_everything(seed)
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4, head_dropout=0.3)
    data = SyntheticDataModule(num_samples=64, batch_size=8, num_workers=workers, augment=True)
    losses = Losses()
    quiet_trainer(losses, max_epochs=2, deterministic=True).fit(model, datamodule=data)
    return losses.losses, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_identical(a, b) -> None:
    assert a[0] == b[0]  # per-step losses, bit for bit
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


@pytest.mark.slow
def test_same_seed_is_bit_identical_with_workers_and_another_seed_differs():
    first, again = train(0, workers=2), train(0, workers=2)
    assert len(first[0]) == 12
    assert_identical(first, again)
    # Augmentation is drawn per sample from (seed, epoch, index): where it is drawn does not matter.
    assert_identical(first, train(0, workers=0))
    other = train(1, workers=2)
    assert all(x != y for x, y in zip(first[0], other[0], strict=True))
    assert not any(torch.equal(first[1][name], other[1][name]) for name in first[1] if name.endswith("weight"))
