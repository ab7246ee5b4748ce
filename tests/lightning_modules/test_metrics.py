import pytest
import torch
from lightning import Callback, LightningDataModule
from lightning.pytorch.loggers import CSVLogger
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


@pytest.mark.parametrize(
    ("names", "num_classes"), [(["acc", "acc_top5", "mcc"], 7), (["acc", "f1"], 2), (["pearson", "spearman"], 1)]
)
def test_metrics_fed_in_groups_of_batches_equal_the_batch_by_batch_values(names, num_classes):
    generator = torch.Generator().manual_seed(0)

    def labels():
        return (
            torch.randn(5, generator=generator)
            if num_classes == 1
            else torch.randint(num_classes, (5,), generator=generator)
        )

    batches = [(torch.randn(5, num_classes, generator=generator), labels()) for _ in range(7)]
    one_by_one = TaskMetrics(names, num_classes, batches_per_update=1)
    grouped = TaskMetrics(names, num_classes, batches_per_update=3, max_held=100)
    assert not grouped.updated
    for i, (outputs, labels) in enumerate(batches):
        one_by_one.update(outputs, labels)
        grouped.update(outputs, labels)
        if i == 1:  # two batches held back, none fed yet
            assert grouped.updated and not any(m.update_called for m in grouped.metrics.values())
    assert len(grouped._pending) == 1  # 7 batches: fed 3 + 3, one held (fewer values than max_held)
    expected, values = one_by_one.compute(), grouped.compute()
    assert values.keys() == expected.keys()
    for name in expected:
        assert values[name] == pytest.approx(expected[name].item(), abs=1e-6), name
    grouped.reset()
    assert not grouped.updated
    large = TaskMetrics(["acc"], 10, max_held=20)
    large.update(torch.randn(4, 10), torch.arange(4))  # 40 values: fed at once
    assert large.metrics["acc"].update_called and not large._pending


class StepLosses(FineTuning):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.step_losses.append(loss.item())
        return loss


class StopAfterStep(Callback):
    """Stops the run at the end of a step, as Lightning's `Timer` (`trainer.max_time`) does."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step + 1:
            trainer.should_stop = True


@pytest.mark.parametrize(("stop", "written"), [(None, [2, 5, 8]), (6, [2, 5, 6])])
def test_per_step_values_are_logged_at_the_steps_the_logger_writes_and_at_the_last_step(tmp_path, stop, written):
    model = StepLosses(backbone="tiny_cnn", pretrained=False, num_classes=4)
    model.step_losses = []
    data = SyntheticDataModule(num_classes=4, preprocessing=backbone_preprocessing("tiny_cnn"))
    trainer = quiet_trainer(
        *([StopAfterStep(stop)] if stop is not None else []),
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=3,
        max_steps=10,
        max_epochs=10,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = {
        int(row[header.index("step")]): float(row[header.index("train/loss")])
        for row in (line.split(",") for line in rows[1:])
        if row[header.index("train/loss")]
    }
    assert sorted(logged) == written  # every log_every_n_steps-th step, and a step where a callback stops the run
    for step, value in logged.items():
        assert value == pytest.approx(model.step_losses[step], abs=1e-6)  # that step's own value
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(model.step_losses[-1], abs=1e-6)
