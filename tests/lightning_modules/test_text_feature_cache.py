"""The feature cache on text: `FeatureExtraction(cache_features=True)` and LP-FT on a GLUE datamodule."""

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Callback, Trainer
from support import GLUE_FIXTURES as FIXTURES
from support import quiet_trainer

from datamodules import GLUEDataModule
from datamodules.samplers import EpochSeededRandomSampler
from experiments.cli import CONFIGS
from lightning_modules import FeatureExtraction, FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.feature_cache import FeatureEncoder


def glue(task: str, tmp_path: Path, **kwargs) -> GLUEDataModule:
    kwargs = {"batch_size": 2} | kwargs
    preprocessing = backbone_preprocessing("tiny_bert")
    return GLUEDataModule(task, str(FIXTURES), preprocessing=preprocessing, cache_dir=str(tmp_path / "tok"), **kwargs)


class LengthEncoder:
    """Feature of a row: its token count, in loader order; records the names it was called with."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, name, loader):
        self.calls.append(name)
        assert not isinstance(loader.sampler, torch.utils.data.RandomSampler)
        return torch.cat([b["attention_mask"].sum(1, keepdim=True).float() for b in loader])


def token_counts(dataset) -> torch.Tensor:
    return dataset.lengths.float().unsqueeze(1)


# --- the datamodule's hook -------------------------------------------------------------------------


def test_feature_sets_name_each_validation_file_and_fingerprint_it_alone(tmp_path):
    mnli, rte = glue("mnli", tmp_path), glue("rte", tmp_path)
    assert mnli.feature_sets("val") == ["val_0", "val_1"] and mnli.feature_sets("train") == ["train"]
    assert rte.feature_sets("val") == ["val"]
    prints = {name: mnli.fingerprint(name) for name in ("val", "val_0", "val_1")}
    assert len(set(prints.values())) == 3
    assert glue("mnli", tmp_path).fingerprint("val_1") == prints["val_1"]  # deterministic
    assert rte.fingerprint("val_0") == rte.fingerprint("val")  # one file: the same rows, the same key
    for bad in ("val_2", "val_x", "dev", "train_1"):
        with pytest.raises(ValueError, match=f"unknown split '{bad}'"):
            mnli.fingerprint(bad)


def test_text_serves_train_and_every_validation_set_as_features(tmp_path):
    dm = glue("mnli", tmp_path)
    dm.setup("fit")
    encoder = LengthEncoder()
    dm.set_input_encoder(encoder)
    for _ in range(2):
        train = list(dm.train_dataloader())
        val = dm.val_dataloader()
    assert encoder.calls == ["train", "val_0", "val_1"]  # once per set, memoized
    assert isinstance(dm.train_dataloader().sampler, EpochSeededRandomSampler)
    (dataset,) = dm.split_datasets("train")
    index = torch.cat([b["index"] for b in train])
    assert sorted(index.tolist()) == list(range(len(dataset)))
    for batch in train:
        assert set(batch) == {"features", "labels", "index"}
        assert torch.equal(batch["features"], token_counts(dataset)[batch["index"]])
        assert torch.equal(batch["labels"], dataset.labels[batch["index"]])
    assert isinstance(val, list) and len(val) == 2  # matched, mismatched: the order of `val_names`
    for loader, dataset in zip(val, dm.split_datasets("val"), strict=True):
        batch = {k: torch.cat([b[k] for b in loader]) for k in ("features", "labels")}
        assert torch.equal(batch["features"], token_counts(dataset))
        assert torch.equal(batch["labels"], dataset.labels)
    assert all("input_ids" in next(iter(loader)) for loader in dm.test_dataloader())
    assert all("input_ids" in next(iter(loader)) for loader in dm.predict_dataloader())
    dm.set_input_encoder(None)
    assert "input_ids" in next(iter(dm.train_dataloader()))


def test_text_encoder_with_wrong_row_count_names_the_set(tmp_path):
    dm = glue("mnli", tmp_path)
    dm.set_input_encoder(lambda name, loader: torch.zeros(3, 4))  # val_0 has 3 rows, val_1 has 2
    with pytest.raises(ValueError, match=r"returned \[3, 4\] for the val_1 split; expected \[2, D\]"):
        dm.val_dataloader()


# --- FeatureExtraction end to end --------------------------------------------------------------------


class TrainBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch)


def fit(dm: GLUEDataModule, feature_dir: Path, state: dict | None = None) -> tuple[FeatureExtraction, Trainer]:
    model = FeatureExtraction(
        backbone="tiny_bert",
        pretrained=False,
        num_classes=dm.num_classes,
        metrics=dm.metrics,
        val_names=dm.val_names,
        cache_features=True,
        feature_cache_dir=str(feature_dir),
    )
    if state is not None:
        model.load_state_dict(state)
    trainer = quiet_trainer(TrainBatches())
    trainer.fit(model, datamodule=dm)
    return model, trainer


def test_feature_extraction_caches_tiny_bert_features_of_glue(tmp_path):
    dm = glue("mnli", tmp_path)
    model, trainer = fit(dm, tmp_path / "features")
    width = model.backbone.num_features
    (recorder,) = [c for c in trainer.callbacks if isinstance(c, TrainBatches)]
    assert recorder.batches and all(b["features"].shape[1:] == (width,) for b in recorder.batches)
    assert {"val/acc_m", "val/acc_mm", "val/score", "train/loss"} <= set(trainer.logged_metrics)
    assert sorted(dm.input_encoder.extracted) == ["train", "val_0", "val_1"]  # each set once
    assert len(list((tmp_path / "features").glob("*.pt"))) == 3

    # The cached features are the backbone's pooled output of each row alone, without padding.
    model.backbone.eval()
    (dataset,) = dm.split_datasets("train")
    cached = torch.cat([b["features"] for b in dm.feature_loader("train")])
    for row in range(len(dataset)):
        item = dataset[row]
        inputs = {
            "input_ids": item["input_ids"][None],
            "attention_mask": torch.ones_like(item["input_ids"])[None],
            "token_type_ids": item["token_type_ids"][None],
        }
        with torch.no_grad():
            alone = model.backbone(inputs)[0]
        assert torch.allclose(cached[row], alone, atol=1e-5)

    # Same weights, same data: the second run reads every set from disk.
    again = glue("mnli", tmp_path)
    fit(again, tmp_path / "features", state=model.state_dict())
    assert again.input_encoder.extracted == []
    for name in ("train", "val_0", "val_1"):
        first_run, from_disk = (torch.cat([b["features"] for b in d.feature_loader(name)]) for d in (dm, again))
        assert torch.equal(first_run, from_disk)


def test_lp_ft_probes_the_head_on_text_features_before_fine_tuning(tmp_path):
    dm = glue("rte", tmp_path)
    model = FineTuning(
        backbone="tiny_bert",
        pretrained=False,
        num_classes=dm.num_classes,
        head_init="linear_probe",
        feature_cache_dir=str(tmp_path / "features"),
        optimizer=partial(torch.optim.SGD, lr=0.0),
    )
    initial = model.head.weight.detach().clone()
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert not torch.equal(initial, model.head.weight), "the head was not fitted on the text features"
    assert list((tmp_path / "features").glob("*.pt")), "the probe's features went through the feature cache"


def test_lp_ft_refuses_regression_by_name():
    with pytest.raises(ValueError, match="head_init=linear_probe"):
        FineTuning(backbone="tiny_bert", pretrained=False, num_classes=1, head_init="linear_probe")


def test_the_shipped_feature_caches_follow_transfer_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path))
    configs = sorted(CONFIGS.glob("*/feature_extraction.yaml"))
    assert len(configs) >= 4
    for config in configs:
        value = yaml.safe_load(config.read_text())["model"]["init_args"]["feature_cache_dir"]
        assert FeatureEncoder(torch.nn.Linear(1, 1), "x", str, value).cache_dir == tmp_path / "features", config
    assert FeatureEncoder(torch.nn.Linear(1, 1), "x", str, None).cache_dir is None
