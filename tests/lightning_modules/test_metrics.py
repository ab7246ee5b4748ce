import pytest
import torch
from lightning import LightningDataModule
from support import quiet_trainer
from torch.utils.data import DataLoader

from datamodules import SyntheticDataModule
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.metrics import TaskMetrics


def logits_for(predictions, num_classes=2):
    return torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float() * 5


def test_classification_metrics_against_hand_computed_values():
    # predictions 1 1 0 0 1 0 vs labels 1 0 0 1 1 0: TP=2 FP=1 FN=1 TN=2
    metrics = TaskMetrics(["acc", "f1", "mcc"], num_classes=2)
    metrics.update(logits_for([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 1, 1, 0]))
    values = metrics.compute()
    assert values["acc"] == pytest.approx(4 / 6)
    assert values["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2TP / (2TP + FP + FN)
    assert values["mcc"] == pytest.approx((2 * 2 - 1 * 1) / (3 * 3 * 3 * 3) ** 0.5)
    assert values["score"] == pytest.approx((4 / 6 + 4 / 6 + 1 / 3) / 3)


def test_regression_metrics_against_hand_computed_values():
    metrics = TaskMetrics(["pearson", "spearman"], num_classes=1)
    predictions, labels = torch.tensor([[1.0], [2.0], [3.0], [10.0]]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    metrics.update(predictions, labels)
    values = metrics.compute()
    x, y = predictions.squeeze() - 4.0, labels - 2.5
    assert values["pearson"] == pytest.approx((x @ y / (x.norm() * y.norm())).item(), abs=1e-6)
    assert values["spearman"] == pytest.approx(1 - 6 * (0 + 1 + 1 + 0) / (4 * (16 - 1)))  # ranks 1234 vs 1324
    metrics.reset()
    with pytest.raises(ValueError, match="unknown metrics"):
        TaskMetrics(["bleu"], 2)


class TwoValidationSets(LightningDataModule):
    """MNLI-like: one training set, two validation sets (matched and mismatched)."""

    metrics, val_names, num_classes = ["acc"], ["m", "mm"], 4

    def __init__(self):
        super().__init__()
        self.inner = SyntheticDataModule(num_classes=4, preprocessing=backbone_preprocessing("tiny_cnn"))

    def train_dataloader(self) -> DataLoader:
        return self.inner.train_dataloader()

    def val_dataloader(self) -> list[DataLoader]:
        return [self.inner.val_dataloader(), self.inner.test_dataloader()]


def test_each_validation_set_gets_its_own_names_and_score_is_their_mean():
    data = TwoValidationSets()
    model = FineTuning(
        backbone="tiny_cnn", pretrained=False, num_classes=4, metrics=data.metrics, val_names=data.val_names
    )
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, datamodule=data)
    logged = trainer.logged_metrics
    assert {"val/acc_m", "val/acc_mm", "val/loss_m", "val/loss_mm", "val/score", "train/score"} <= set(logged)
    assert logged["val/score"] == pytest.approx(((logged["val/acc_m"] + logged["val/acc_mm"]) / 2).item())


def test_regression_head_trains_with_mse():
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=1)
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0.0, 1.5, 3.0, 5.0])}
    out = model.compute_loss(batch, "train")
    assert out["logits"].shape == (4, 1)
    assert out["loss"].item() == pytest.approx(((out["logits"].squeeze(-1) - batch["labels"]) ** 2).mean().item())
    assert model.predict_step(batch, 0).shape == (4,)
