"""The shared TransferDataModule machinery, exercised through SyntheticDataModule (no files)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from datamodules import Preprocessing, SyntheticDataModule, TransferDataModule
from datamodules.datasets import TensorImageDataset

FLAT = Preprocessing(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def make(**kwargs) -> SyntheticDataModule:
    kwargs = {"num_classes": 4, "num_samples": 80, "num_test_samples": 20, "val_fraction": 0.25} | kwargs
    return SyntheticDataModule(**kwargs)


def counts(dm: TransferDataModule, split: str) -> list[int]:
    return torch.bincount(dm.datasets[split].labels, minlength=dm.num_classes).tolist()


def test_num_classes_and_names_need_no_data(monkeypatch):
    monkeypatch.setattr(SyntheticDataModule, "load_splits", lambda self: pytest.fail("data was read"))
    dm = make(num_classes=3)
    assert dm.num_classes == 3 and dm.class_names == ["class_0", "class_1", "class_2"]
    assert "SyntheticDataModule(" in str(dm)  # Lightning's default str() would build every loader


def test_splits_are_stratified_and_setup_is_idempotent():
    dm = make()
    dm.setup("fit")
    assert counts(dm, "train") == [15] * 4 and counts(dm, "val") == [5] * 4 and counts(dm, "test") == [5] * 4
    train = dm.datasets["train"]
    dm.setup("test")
    assert dm.datasets["train"] is train


@pytest.mark.parametrize("split", ["train", "val", "test", "predict"])
def test_batches_are_dicts_with_the_contract_dtypes_and_shapes(split):
    dm = make(batch_size=8, image_size=12)
    dm.setup()
    batch = next(iter(getattr(dm, f"{split}_dataloader")()))
    assert set(batch) == {"pixel_values", "labels", "index"}
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (8, 3, 12, 12)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (8,)
    assert batch["index"].dtype == torch.int64 and batch["index"].shape == (8,)
    dataset = dm.datasets["test" if split == "predict" else split]
    assert batch["labels"].tolist() == dataset.labels[batch["index"]].tolist()


def test_train_loader_shuffles_and_eval_loaders_do_not():
    dm = make(batch_size=8)
    dm.setup()
    torch.manual_seed(0)
    train_order = torch.cat([b["index"] for b in dm.train_dataloader()])
    assert sorted(train_order.tolist()) == list(range(60)) and train_order.tolist() != list(range(60))
    val_order = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert val_order.tolist() == list(range(20))


def test_eval_dataloader_is_unaugmented_and_deterministic():
    dm = make(batch_size=16, augment=True)
    dm.setup()
    torch.manual_seed(0)
    augmented = torch.stack([dm.datasets["train"][0]["pixel_values"] for _ in range(8)])
    assert not torch.equal(augmented.min(0).values, augmented.max(0).values)  # augmentation is live

    def pass_over(split):
        batches = list(dm.eval_dataloader(split))
        return torch.cat([b["pixel_values"] for b in batches]), torch.cat([b["index"] for b in batches])

    first, index = pass_over("train")
    second, _ = pass_over("train")
    assert torch.equal(first, second) and index.tolist() == list(range(60))
    plain = dm.transform(train=False)(dm.datasets["train"].with_transform(None)[0]["pixel_values"])
    assert torch.equal(first[0], plain)


def test_crop_scale_trains_on_resized_crops_of_the_whole_image():
    image = torch.arange(3 * 40 * 40, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 40, 40)
    padded = make(image_size=16, preprocessing=FLAT).transform(train=True)
    resized = make(image_size=16, preprocessing=FLAT, crop_scale=0.35)
    torch.manual_seed(0)
    crops = torch.stack([resized.transform(train=True)(image) for _ in range(16)])
    assert crops.shape == (16, 3, 16, 16) and len(crops.unique(dim=0)) > 8  # random scales and positions
    torch.manual_seed(0)
    assert not torch.equal(padded(image), resized.transform(train=True)(image))
    eval_views = [
        make(image_size=16, preprocessing=FLAT, crop_scale=c).transform(train=False)(image) for c in (None, 0.35)
    ]
    assert torch.equal(*eval_views)  # evaluation is the same resize and centre crop
    with pytest.raises(
        ValueError, match=r"data\.crop_scale must be null with data\.batched_augmentation=true.*got 0\.35"
    ):
        make(crop_scale=0.35, batched_augmentation=True)


def test_eval_dataloader_rejects_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make().eval_dataloader("dev")


def test_workers_are_persistent_only_for_the_standard_loaders():
    dm = make(num_workers=1)
    dm.setup()
    assert dm.train_dataloader().persistent_workers and dm.val_dataloader().persistent_workers
    assert not dm.eval_dataloader("train").persistent_workers
    assert not make(num_workers=0).train_dataloader().persistent_workers


@pytest.mark.parametrize("key", ["train_per_class", "max_per_class"])
def test_per_class_cap_either_name(key):
    dm = make(seed=3, **{key: 6})
    dm.setup()
    pool = [t + v for t, v in zip(counts(dm, "train"), counts(dm, "val"), strict=True)]
    assert pool == [6] * 4 and counts(dm, "val") == [2] * 4  # val carved from the capped pool
    assert dm.train_per_class == dm.max_per_class == 6


def test_both_cap_names_select_the_same_samples():
    assert make(train_per_class=6).fingerprint() == make(max_per_class=6).fingerprint()
    assert make(train_per_class=6, max_per_class=6).fingerprint() == make(max_per_class=6).fingerprint()


def test_conflicting_cap_names_are_an_error_naming_both():
    with pytest.raises(ValueError, match=r"data\.train_per_class=5 and data\.max_per_class=6"):
        make(train_per_class=5, max_per_class=6)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 0),
        ("num_workers", -1),
        ("val_fraction", 0.0),
        ("val_fraction", 1.0),
        ("seed", -1),
        ("image_size", 0),
        ("train_per_class", 0),
        ("max_per_class", -2),
        ("crop_scale", 0.0),
        ("crop_scale", 1.5),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=rf"data\.{key} must be"):
        make(**{key: value})


class BadLabels(SyntheticDataModule):
    def __init__(self, split: str, labels_fn, **kwargs):
        super().__init__(**kwargs)
        self.bad_split, self.labels_fn = split, labels_fn

    def load_splits(self):
        pool, test = super().load_splits()
        target = pool if self.bad_split == "train" else test
        target.labels = self.labels_fn(target.labels)
        return pool, test


@pytest.mark.parametrize("split", ["train", "test"])
def test_out_of_range_label_is_reported_at_setup(split):
    def corrupt(labels):
        labels = labels.clone()
        labels[5] = 7
        return labels

    dm = BadLabels(split, corrupt, num_classes=4)
    with pytest.raises(ValueError, match=rf"{split} split: label 7 \(sample 5\) is outside \[0, 4\)"):
        dm.setup()


def test_wrong_label_dtype_is_reported_at_setup():
    dm = BadLabels("train", lambda labels: labels.to(torch.int32), num_classes=4)
    with pytest.raises(ValueError, match="train split: labels must be int64"):
        dm.setup()


def test_fingerprint_is_stable_and_sensitive():
    base = make().fingerprint()
    assert len(base) == 64 and int(base, 16) >= 0
    assert make().fingerprint() == base
    for changed in (make(seed=1), make(train_per_class=10), make(image_size=24), make(val_fraction=0.5)):
        assert changed.fingerprint() != base
    flat = make(preprocessing=Preprocessing(16, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)))
    assert flat.fingerprint() != make(preprocessing=Preprocessing(16)).fingerprint()
    bicubic = make(preprocessing=Preprocessing(16, interpolation="bicubic"))
    assert bicubic.fingerprint() != make(preprocessing=Preprocessing(16)).fingerprint()


def test_fingerprint_per_split():
    dm, capped = make(), make(train_per_class=10)
    splits = {s: dm.fingerprint(s) for s in ("train", "val", "test")}
    assert len(set(splits.values())) == 3
    assert capped.fingerprint("test") == splits["test"]  # the cap only touches the training pool
    assert capped.fingerprint("train") != splits["train"]
    assert dm.fingerprint() not in splits.values()


def test_fingerprint_ignores_augmentation_and_batching():
    assert make(augment=False, batch_size=3, num_workers=1).fingerprint() == make().fingerprint()


@pytest.mark.slow
def test_fingerprint_is_the_same_in_a_fresh_process():
    code = "from datamodules import SyntheticDataModule as S; print(S(num_samples=40, seed=2).fingerprint())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == SyntheticDataModule(num_samples=40, seed=2).fingerprint()


class RecordingEncoder:
    """Mean pixel per image, in the order the loader yields them; records what it was given."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, split, loader):
        self.calls.append(split)
        assert not isinstance(loader.sampler, torch.utils.data.RandomSampler)
        return torch.cat([b["pixel_values"].mean(dim=(2, 3)) for b in loader])


def test_input_encoder_serves_features_for_train_and_val_once_per_split():
    dm = make(batch_size=8)
    dm.setup()
    encoder = RecordingEncoder()
    dm.set_input_encoder(encoder)
    expected = torch.cat([b["pixel_values"].mean(dim=(2, 3)) for b in dm.eval_dataloader("train")])
    for _ in range(2):
        torch.manual_seed(0)
        batches = list(dm.train_dataloader())
        list(dm.val_dataloader())
    assert encoder.calls == ["train", "val"]
    assert set(batches[0]) == {"features", "labels", "index"}
    index = torch.cat([b["index"] for b in batches])
    assert sorted(index.tolist()) == list(range(60)) and index.tolist() != list(range(60))  # shuffled
    for batch in batches:
        assert batch["features"].shape == (len(batch["index"]), 3) and batch["labels"].dtype == torch.int64
        assert torch.equal(batch["features"], expected[batch["index"]])  # un-augmented features, right rows
        assert torch.equal(batch["labels"], dm.datasets["train"].labels[batch["index"]])
    assert dm.train_dataloader().num_workers == 0
    assert "pixel_values" in next(iter(dm.test_dataloader()))
    assert "pixel_values" in next(iter(dm.predict_dataloader()))
    dm.set_input_encoder(None)
    assert "pixel_values" in next(iter(dm.train_dataloader()))


def test_a_new_encoder_is_called_again():
    dm = make()
    first, second = RecordingEncoder(), RecordingEncoder()
    dm.set_input_encoder(first)
    dm.train_dataloader()
    dm.set_input_encoder(first)
    dm.train_dataloader()
    dm.set_input_encoder(second)
    dm.train_dataloader()
    assert first.calls == ["train"] and second.calls == ["train"]


def test_encoder_with_wrong_row_count_is_an_error():
    dm = make()
    dm.set_input_encoder(lambda split, loader: torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"returned \[3, 5\] for the train split; expected \[60, D\]"):
        dm.train_dataloader()


def test_synthetic_defaults_and_overrides():
    assert SyntheticDataModule().image_size == 16
    assert SyntheticDataModule(preprocessing=Preprocessing(image_size=8)).image_size == 8
    assert SyntheticDataModule(preprocessing=Preprocessing(image_size=8), image_size=20).image_size == 20
    dm = SyntheticDataModule(image_size=20, batch_size=4)
    dm.setup()
    assert next(iter(dm.val_dataloader()))["pixel_values"].shape == (4, 3, 20, 20)


def test_synthetic_data_depends_on_seed_only():
    a, b = make(seed=4), make(seed=4)
    a.setup(), b.setup()
    assert torch.equal(a.datasets["test"].images, b.datasets["test"].images)
    assert make(seed=5).fingerprint("test") != a.fingerprint("test")


def test_synthetic_signal_is_learnable():
    dm = make(num_classes=5, num_samples=200, num_test_samples=100)
    dm.setup()

    def mean_colour(split):
        dataset = dm.datasets[split]
        assert isinstance(dataset, TensorImageDataset)
        return dataset.images.float().mean(dim=(2, 3)).numpy(), dataset.labels.numpy()

    x, y = mean_colour("train")
    centroids = np.stack([x[y == c].mean(0) for c in range(5)])
    xt, yt = mean_colour("test")
    predicted = np.linalg.norm(xt[:, None] - centroids[None], axis=2).argmin(1)
    assert (predicted == yt).mean() > 0.9


def test_cli_signature_has_descriptions_and_parses_preprocessing():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SyntheticDataModule, "data")
    help_text = parser.format_help()
    assert "Cap on images per class" in help_text and "Data seed for the per-class cap" in help_text
    cfg = parser.parse_args(["--data.preprocessing.image_size=8", "--data.max_per_class=3"])
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, SyntheticDataModule) and dm.image_size == 8 and dm.train_per_class == 3


def test_shuffle_order_depends_on_seed_and_epoch_only():
    from datamodules.samplers import EpochSeededRandomSampler

    first, again = EpochSeededRandomSampler(range(50), seed=3), EpochSeededRandomSampler(range(50), seed=3)
    list(first)  # consuming one epoch must not change the next: no hidden generator state
    first.set_epoch(2)
    again.set_epoch(2)
    assert list(first) == list(again)
    assert sorted(first) == list(range(50))
    again.set_epoch(3)
    assert list(first) != list(again)


def test_test_split_cap_is_balanced_and_leaves_train_alone():
    full, capped = make(), make(test_per_class=3)
    capped.setup()
    assert counts(capped, "test") == [3] * 4
    assert capped.fingerprint("train") == full.fingerprint("train")
    assert capped.fingerprint("test") != full.fingerprint("test")
    with pytest.raises(ValueError, match="data.test_per_class"):
        make(test_per_class=0)
