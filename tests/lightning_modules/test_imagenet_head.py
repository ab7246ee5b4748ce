"""Zero-shot evaluation and `head_init: imagenet_rows`: the pretrained ImageNet classifier's rows for a subset."""

import json

import pytest
import torch
from image_trees import imagenet_tree
from shared_files import require_shared
from support import quiet_trainer
from torch import nn

from datamodules import ImageNetSubsetDataModule, Preprocessing, SyntheticDataModule
from datamodules.imagenet_classes import IMAGENETTE
from experiments.cli import CONFIGS, cli_main
from lightning_modules import FeatureExtraction, FineTuning, ZeroShot
from lightning_modules.backbones import register_backbone, registered_backbones
from lightning_modules.backbones.tiny import TINY_PREPROCESSING, TinyCNN

HEADED = "test_imagenet_cnn"


class HeadedTinyCNN(TinyCNN):
    """A tiny backbone standing in for a pretrained one: a random 1000-way "ImageNet" classifier (tests only)."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(self.num_features, 1000).requires_grad_(False)

    def pretrained_head(self) -> nn.Linear:
        return self.classifier


if HEADED not in registered_backbones():
    register_backbone(HEADED, TINY_PREPROCESSING)(lambda pretrained: HeadedTinyCNN())


@pytest.fixture
def subset(tmp_path) -> ImageNetSubsetDataModule:
    root = imagenet_tree(tmp_path / "in", {"val": 8}, classes=["n03888257", "n01440764", "n02102040"])
    return ImageNetSubsetDataModule(
        root=str(root), num_workers=0, batch_size=8, preprocessing=Preprocessing(16), val_fraction=0.25
    )


def sgd_at_zero(params):
    return torch.optim.SGD(params, lr=0.0)  # one step that changes nothing: the head stays as initialised


def test_zero_shot_logits_are_the_pretrained_logits_at_the_subset_indices(subset):
    model = ZeroShot(backbone=HEADED, num_classes=3)
    (result,) = quiet_trainer().test(model, datamodule=subset, verbose=False)
    assert subset.imagenet_indices == [0, 217, 701]
    model.eval()
    logits, labels = [], []
    for batch in subset.test_dataloader():
        with torch.no_grad():
            full = model.backbone.pretrained_head()(model.backbone(batch["pixel_values"]))
            torch.testing.assert_close(model(batch), full[:, subset.imagenet_indices], rtol=1e-6, atol=1e-6)
        logits.append(full[:, subset.imagenet_indices])
        labels.append(batch["labels"])
    accuracy = (torch.cat(logits).argmax(-1) == torch.cat(labels)).float().mean().item()
    assert result["test/acc"] == pytest.approx(accuracy)
    assert not any(p.requires_grad for p in model.parameters())


def test_zero_shot_refuses_to_fit(subset):
    with pytest.raises(ValueError, match="ZeroShot trains nothing: run `transfer test`"):
        quiet_trainer(max_steps=1).fit(ZeroShot(backbone=HEADED, num_classes=3), datamodule=subset)


@pytest.mark.parametrize("strategy", [FineTuning, FeatureExtraction])
def test_imagenet_rows_copies_the_pretrained_rows_and_biases_into_the_head(strategy, subset):
    model = strategy(backbone=HEADED, num_classes=3, head_init="imagenet_rows", optimizer=sgd_at_zero)
    random_head = model.head.weight.clone()
    quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=subset)
    classifier = model.backbone.pretrained_head()
    assert torch.equal(model.head.weight, classifier.weight[[0, 217, 701]])
    assert torch.equal(model.head.bias, classifier.bias[[0, 217, 701]])
    assert not torch.equal(model.head.weight, random_head)


def test_imagenet_rows_with_head_dropout_fills_the_linear_layer(subset):
    model = FineTuning(
        backbone=HEADED, num_classes=3, head_init="imagenet_rows", head_dropout=0.1, optimizer=sgd_at_zero
    )
    quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=subset)
    assert torch.equal(model.head[-1].weight, model.backbone.pretrained_head().weight[[0, 217, 701]])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (
            {"backbone": "tiny_cnn", "pretrained": False},
            "needs a backbone with a pretrained classifier; tiny_cnn has none",
        ),
        ({"backbone": HEADED, "pretrained": False}, "model.pretrained is false and no model.weights given"),
    ],
)
@pytest.mark.parametrize("strategy", [FineTuning, FeatureExtraction])
def test_imagenet_rows_without_pretrained_rows_fails_at_construction(strategy, kwargs, named):
    with pytest.raises(ValueError, match=f"model.head_init=imagenet_rows .*{named}"):
        strategy(num_classes=3, head_init="imagenet_rows", **kwargs)
    with pytest.raises(ValueError, match=named):
        ZeroShot(num_classes=3, **kwargs)


def test_imagenet_rows_needs_a_datamodule_with_imagenet_indices():
    data = SyntheticDataModule(num_classes=3, num_samples=12)
    model = FineTuning(backbone=HEADED, num_classes=3, head_init="imagenet_rows")
    with pytest.raises(ValueError, match="SyntheticDataModule does not give.*ImageNetSubsetDataModule"):
        quiet_trainer(max_steps=1).fit(model, datamodule=data)
    with pytest.raises(ValueError, match="model ZeroShot needs the ImageNet-1k index of every class"):
        quiet_trainer().test(ZeroShot(backbone=HEADED, num_classes=3), datamodule=data)


def test_transfer_test_runs_the_shipped_zero_shot_config_and_records_the_classes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = imagenet_tree(tmp_path / "imagenette", {"val": 2}, classes=IMAGENETTE)
    cli_main(
        ["test", "-c", str(CONFIGS / "imagenette" / "zero_shot.yaml"), "-c", str(CONFIGS / "logger" / "csv.yaml"),
         "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.init_args.root", str(root),
         "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0"]
    )  # fmt: skip
    run = next(tmp_path.glob("csv/version_*"))
    rows = list((run / "metrics.csv").read_text().splitlines())
    assert rows[0].split(",")[:4] == ["epoch", "step", "test/acc", "test/acc_top5"]
    classes = json.loads((run / "run_metadata.json").read_text())["classes"]
    assert [c["name"] for c in classes][:2] == ["tench", "English springer"] and len(classes) == 10
    assert classes[-1] == {"label": 9, "wnid": "n03888257", "imagenet_index": 701, "name": "parachute"}


def test_efficientnet_lite0_zero_shot_on_real_imagenette_images(shared, tmp_path_factory, monkeypatch):
    archive = shared / "data" / "imagenette-val.tar.gz"
    require_shared(archive, "the Imagenette val archive")
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shared-cache"))
    model = ZeroShot(backbone="efficientnet_lite0", num_classes=10)
    data = ImageNetSubsetDataModule(
        root=str(archive), classes="imagenette", train_split=None, test_per_class=3, num_workers=0,
        preprocessing=model.backbone.preprocessing, batch_size=30,
    )  # fmt: skip
    (result,) = quiet_trainer().test(model, datamodule=data, verbose=False)
    assert result["test/acc"] >= 0.9  # 99 % over the whole split (README of ../shared)


@pytest.mark.parametrize(
    ("command", "model"),
    [("fit", ["FineTuning", "--model.head_init", "imagenet_rows"]), ("test", ["ZeroShot"])],
    ids=["imagenet_rows", "zero-shot"],
)
def test_the_cli_refuses_data_without_imagenet_indices_before_anything_runs(
    command, model, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as raised:
        cli_main([command, "--model", *model, "--model.backbone", HEADED, "--data", "SyntheticDataModule"])
    assert raised.value.code == 2
    assert "SyntheticDataModule does not give: use datamodules.ImageNetSubsetDataModule" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
