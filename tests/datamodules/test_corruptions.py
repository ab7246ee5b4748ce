"""Corrupted test sets: the package's corruptions, deterministic per image, cached, logged per set and on average."""

import numpy as np
import pytest
import torch
from support import quiet_trainer

from datamodules.corruptions import cached_corruption, corrupt_image, corruption_names, image_seed
from datamodules.synthetic import SyntheticDataModule
from datamodules.transforms import Preprocessing, normalize, resize_crop
from lightning_modules import Contrastive, FineTuning
from lightning_modules.metrics import shift_means

pytest.importorskip("imagecorruptions")


def image(seed=0, side=32):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, side, side), dtype=np.uint8))


def test_groups_expand_in_the_package_order_and_unknown_names_are_named():
    assert len(corruption_names(["common"])) == 15
    noise = ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert corruption_names(["fog", "noise", "gaussian_noise"]) == [*noise, "fog"]
    with pytest.raises(ValueError, match=r"data.corruptions: unknown corruption 'fgo'"):
        corruption_names(["fgo"])


@pytest.mark.parametrize("corruption", corruption_names(["all"]))
def test_every_corruption_is_the_same_for_the_same_seed_and_leaves_numpy_as_it_was(corruption):
    picture = image()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = corrupt_image(picture, corruption, 3, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)
    again = corrupt_image(picture, corruption, 3, seed=7)
    assert first.dtype == torch.uint8 and first.shape == picture.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, picture)  # it did corrupt


def test_noise_differs_between_images_and_seeds_are_stable_across_processes():
    picture = image()
    assert image_seed("gaussian_noise", 1, 0) == 2006718225  # crc32 of "gaussian_noise/1/0", not Python's hash
    assert not torch.equal(corrupt_image(picture, "gaussian_noise", 1, image_seed("gaussian_noise", 1, 0)),
                           corrupt_image(picture, "gaussian_noise", 1, image_seed("gaussian_noise", 1, 1)))  # fmt: skip


def test_a_set_is_computed_once_into_the_cache_and_read_back_equal(tmp_path, monkeypatch):
    data = SyntheticDataModule(num_samples=8, num_test_samples=6, image_size=32)
    data.setup()
    samples, prep = data._split_samples("test"), data.preprocessing
    args = (samples, "gaussian_noise", 2, resize_crop(prep, 32), normalize(prep), data.fingerprint("test"))
    first = cached_corruption(*args, root=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("gaussian_noise-2-")
    import datamodules.corruptions as module

    monkeypatch.setattr(module, "corrupt_image", lambda *a: pytest.fail("recomputed a cached set"))
    second = cached_corruption(*args, root=tmp_path)
    assert len(second) == 6 and torch.equal(first[3]["pixel_values"], second[3]["pixel_values"])
    assert torch.equal(second[3]["labels"], samples.labels[3])
    geometry = resize_crop(prep, 32)(samples.load_image(3))
    expected = corrupt_image(geometry, "gaussian_noise", 2, image_seed("gaussian_noise", 2, 3))
    monkeypatch.undo()
    assert torch.allclose(second[3]["pixel_values"], normalize(prep)(expected))


def test_bad_options_are_named_before_any_data_is_read():
    with pytest.raises(ValueError, match=r"data.severities must be distinct values in \[1, 2, 3, 4, 5\], got \[0\]"):
        SyntheticDataModule(corruptions=["fog"], severities=[0])
    with pytest.raises(ValueError, match=r"data.image_size must be >= 32 to corrupt images, got 16"):
        SyntheticDataModule(corruptions=["fog"], image_size=16)
    with pytest.raises(ValueError, match="unknown corruption"):
        SyntheticDataModule(corruptions=["snowstorm"])


def test_shift_means_average_over_severities_and_over_every_set():
    values = {
        "fog/1": {"acc": torch.tensor(0.8), "score": torch.tensor(0.8)},
        "fog/3": {"acc": torch.tensor(0.4), "score": torch.tensor(0.4)},
        "snow/1": {"acc": torch.tensor(0.3), "score": torch.tensor(0.3)},
    }
    means = {name: round(value.item(), 4) for name, value in shift_means(values).items()}
    assert means == {"corruptions/acc": 0.5, "fog/acc": 0.6, "snow/acc": 0.3}
    assert shift_means({}) == {}


def merged(results):
    """Lightning returns one dict per test loader; the names are unique across them."""
    return {name: value for per_loader in results for name, value in per_loader.items()}


@pytest.mark.parametrize("strategy", ["fine_tuning", "contrastive"])
def test_the_test_loop_logs_clean_and_every_corrupted_set(tmp_path, monkeypatch, strategy):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path))
    data = SyntheticDataModule(num_samples=16, num_test_samples=8, image_size=32, corruptions=["fog", "contrast"],
                               severities=[1, 5], preprocessing=Preprocessing(image_size=32))  # fmt: skip
    if strategy == "fine_tuning":
        model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=4)
        metric = "acc"
    else:
        model = Contrastive(backbone="tiny_cnn", pretrained=False, num_classes=4, projector_dims=[8, 4], knn_k=3)
        metric = "knn_acc"
    results = merged(quiet_trainer().test(model, datamodule=data))
    sets = ["fog/1", "fog/5", "contrast/1", "contrast/5"]
    assert {f"test/{s}/{metric}" for s in sets} <= set(results)
    assert f"test/{metric}" in results and "test/fog/1/score" not in results
    fog = (results[f"test/fog/1/{metric}"] + results[f"test/fog/5/{metric}"]) / 2
    assert results[f"test/fog/{metric}"] == pytest.approx(fog)
    every = np.mean([results[f"test/{s}/{metric}"] for s in sets])
    assert results[f"test/corruptions/{metric}"] == pytest.approx(every)
    if strategy == "fine_tuning":
        assert results["test/score"] == pytest.approx(results["test/acc"])  # the clean split only
        assert "test/fog/5/loss" in results
    assert len(list((tmp_path / "corruptions").iterdir())) == 4
    again = merged(quiet_trainer().test(model, datamodule=data))  # a second test: the same sets, from the cache
    assert again[f"test/contrast/5/{metric}"] == pytest.approx(results[f"test/contrast/5/{metric}"])
