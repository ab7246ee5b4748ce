import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from image_trees import imagenet_tree, write_jpeg
from PIL import Image
from shared_files import require_shared

from datamodules import ImageFolderDataModule, ImageNetSubsetDataModule, Preprocessing
from datamodules.decode import UnreadableImageError, decode_image_file
from datamodules.imagenet_classes import IMAGENETTE
from experiments.cli import cli_main

SMALL = Preprocessing(image_size=16)
WNIDS = sorted(IMAGENETTE[:3])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make(root, cls=ImageNetSubsetDataModule, **kwargs):
    kwargs = {"num_workers": 0, "batch_size": 4, "preprocessing": SMALL, **kwargs}
    return cls(root=str(root), **kwargs)


def files(dm, split) -> list[str]:
    return [f"{Path(str(dm._samples[split].root)).name}/{f}" for f in dm._samples[split].files]


def per_class(dm, split) -> dict[int, int]:
    return dict(Counter(dm._samples[split].labels.tolist()))


def test_only_val_present_carves_stratified_deterministic_train_val_test(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"val": 10})
    dm = make(root, classes=list(reversed(WNIDS)), val_fraction=0.25, test_fraction=0.2)
    dm.setup()
    assert dm.class_names == WNIDS  # sorted wnid order, whatever order they were given in
    assert {s: per_class(dm, s) for s in ("train", "val", "test")} == {
        "train": {0: 6, 1: 6, 2: 6},
        "val": {0: 2, 1: 2, 2: 2},
        "test": {0: 2, 1: 2, 2: 2},
    }
    splits = [set(files(dm, s)) for s in ("train", "val", "test")]
    assert set.union(*splits) == {f"val/{w}/{w}_{k}.JPEG" for w in WNIDS for k in range(10)}
    assert sum(map(len, splits)) == 30  # disjoint
    again = make(root, classes=WNIDS, val_fraction=0.25)
    assert again.fingerprint() == dm.fingerprint()
    other_seed = make(root, classes=WNIDS, val_fraction=0.25, seed=1)
    assert other_seed.fingerprint("test") != dm.fingerprint("test")


def test_train_and_val_folders_val_is_the_test_split_and_validation_is_carved(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"train": 8, "val": 3})
    dm = make(root, classes=WNIDS, max_per_class=5, val_fraction=0.2)
    dm.setup()
    assert all(f.startswith("val/") for f in files(dm, "test")) and per_class(dm, "test") == {0: 3, 1: 3, 2: 3}
    assert all(f.startswith("train/") for f in files(dm, "train") + files(dm, "val"))
    assert per_class(dm, "train") == {0: 4, 1: 4, 2: 4} and per_class(dm, "val") == {0: 1, 1: 1, 2: 1}
    assert make(root, classes=WNIDS, train_per_class=5, val_fraction=0.2).fingerprint() == dm.fingerprint()


def test_train_val_test_folders_are_used_as_they_are(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"train": 4, "val": 2, "test": 3})
    dm = make(root, test_per_class=2)
    dm.setup()
    assert {s: {f.split("/")[0] for f in files(dm, s)} for s in ("train", "val", "test")} == {
        "train": {"train"},
        "val": {"val"},
        "test": {"test"},
    }
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [12, 6, 6]
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32


def test_train_split_null_tests_every_image_and_trains_on_nothing(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"train": 2, "val": 3})
    dm = make(root, train_split=None)
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [0, 0, 9]
    raw = next(iter(dm.eval_dataloader("test")))
    assert raw["labels"].tolist() == [0, 0, 0, 1]
    assert raw["pixel_values"][3, 0].mean() > raw["pixel_values"][0, 0].mean()  # red encodes the class


def test_classes_are_inferred_from_wnid_folders_and_named(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"val": 2}, classes=IMAGENETTE[-2:])
    dm = make(root)
    assert dm.class_names == ["n03445777", "n03888257"] and dm.imagenet_indices == [574, 701]
    assert dm.class_info() == [
        {"label": 0, "wnid": "n03445777", "imagenet_index": 574, "name": "golf ball"},
        {"label": 1, "wnid": "n03888257", "imagenet_index": 701, "name": "parachute"},
    ]
    (root / "val" / "my_photos").mkdir()
    with pytest.raises(ValueError, match="my_photos"):
        _ = make(root).class_names


def test_a_class_subset_ignores_other_folders_and_missing_ones_are_named(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"val": 5})
    listing = tmp_path / "two.txt"
    listing.write_text(f"{WNIDS[2]}\n{WNIDS[0]}\n")
    dm = make(root, classes=str(listing))
    dm.setup()
    assert dm.class_names == [WNIDS[0], WNIDS[2]] and dm.num_classes == 2
    assert {f.split("/")[1] for s in ("train", "val", "test") for f in files(dm, s)} == {WNIDS[0], WNIDS[2]}
    with pytest.raises(FileNotFoundError, match="class folder not found: .*/val/n03000684"):
        make(root, classes="imagenette").setup()  # the first preset class without a folder


@pytest.mark.parametrize("cls", [ImageNetSubsetDataModule, ImageFolderDataModule])
def test_classes_typed_on_the_command_line_as_a_comma_list_or_a_list(cls, tmp_path):
    root = str(imagenet_tree(tmp_path / "in", {"val": 4}))
    for typed in (f"{WNIDS[0]},{WNIDS[2]}", f"[{WNIDS[0]}, {WNIDS[2]}]"):
        cli = cli_main(["--model", "FineTuning", "--model.backbone", "tiny_cnn", "--model.pretrained", "false",
                        "--data", cls.__name__, "--data.root", root, "--data.classes", typed], run=False)  # fmt: skip
        assert cli.datamodule.class_names == [WNIDS[0], WNIDS[2]] and cli.model.hparams.num_classes == 2
    with pytest.raises(ValueError, match="at least two classes"):
        make(root, cls=ImageFolderDataModule, classes=WNIDS[0])


def test_empty_class_folder_is_an_error_naming_the_class(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"val": 3})
    (root / "val" / "n03888257").mkdir()
    with pytest.raises(FileNotFoundError, match="n03888257.* holds no images"):
        make(root, classes=[*WNIDS, "n03888257"]).setup()


def test_archive_wrapped_in_a_folder_matches_the_folder(tmp_path, cache):
    root = imagenet_tree(tmp_path / "in", {"val": 4})
    archive = tmp_path / "imagenette-mini.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "val", arcname="imagenette-mini/val")
    from_archive = make(archive)
    from_archive.setup()
    assert from_archive.class_names == WNIDS and len(from_archive.datasets["test"]) == 3
    assert from_archive.fingerprint() == make(root).fingerprint()
    assert [p.name.startswith("imagenette-mini-") for p in (cache / "data").iterdir()] == [True]


def test_generic_image_folder_with_any_class_names_and_no_split_folders(tmp_path):
    for label, name in enumerate(["cats", "dogs"]):
        for k in range(5):
            write_jpeg(tmp_path / "pets" / name / f"{k}.jpg", label, seed=k)
    dm = make(tmp_path / "pets", ImageFolderDataModule, train_split=".", val_split=None, test_split=None)
    dm.setup()
    assert dm.class_names == ["cats", "dogs"] and dm.class_info()[1] == {"label": 1, "name": "dogs"}
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not hasattr(dm, "imagenet_indices")


def test_splits_with_different_classes_or_no_split_folder_are_errors(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"train": 3})
    imagenet_tree(root, {"val": 2}, classes=WNIDS[:2])
    with pytest.raises(ValueError, match="every split needs the same classes"):
        make(root, ImageFolderDataModule).setup()
    with pytest.raises(FileNotFoundError, match=r"none of the split folders \['training'"):
        make(root, train_split="training", val_split=None, test_split="testing").setup()
    with pytest.raises(ValueError, match="data.root is required"):
        ImageNetSubsetDataModule()
    with pytest.raises(ValueError, match="data.test_fraction"):
        make(root, test_fraction=1.0)


@pytest.fixture
def damaged(tmp_path) -> Path:
    """A tree with a truncated JPEG and a text file named .JPEG among real images."""
    root = imagenet_tree(tmp_path / "in", {"val": 6})
    whole = (root / "val" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG").read_bytes()
    (root / "val" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG").write_bytes(whole[: len(whole) // 2])
    (root / "val" / WNIDS[1] / "notes.JPEG").write_text("not an image, just a renamed text file\n")
    return root


def test_unreadable_files_stop_setup_naming_the_file_by_default(damaged):
    with pytest.raises(UnreadableImageError, match=rf"{WNIDS[0]}_1.JPEG: truncated JPEG.*1 more unreadable"):
        make(damaged).setup()
    write_jpeg(damaged / "val" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG", 0)
    with pytest.raises(UnreadableImageError, match="notes.JPEG: not a JPEG, PNG, GIF or WebP file"):
        make(damaged).setup()
    with pytest.raises(UnreadableImageError, match="notes.JPEG: cannot identify image file"):
        decode_image_file(damaged / "val" / WNIDS[1] / "notes.JPEG")  # at load time: the decoder's reason


def test_skip_leaves_unreadable_files_out_and_counts_them(damaged):
    dm = make(damaged, on_bad_file="skip", train_split=None)
    with pytest.warns(UserWarning, match="left out 2 unreadable image files"):
        dm.setup()
    assert [Path(p).name for p in dm.skipped_files] == [f"{WNIDS[0]}_1.JPEG", "notes.JPEG"]
    assert per_class(dm, "test") == {0: 5, 1: 6, 2: 6}
    assert len([b for b in dm.test_dataloader()]) == 5  # every remaining file decodes


def test_a_file_that_breaks_after_setup_raises_or_is_stood_in_for(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"val": 3})
    strict, lenient = make(root, train_split=None), make(root, train_split=None, on_bad_file="skip")
    strict.setup(), lenient.setup()
    (root / "val" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=f"{WNIDS[1]}_0.JPEG"):
        strict._samples["test"][3]
    with pytest.warns(UserWarning, match=f"{WNIDS[1]}_1.JPEG stands in"):
        item = lenient._samples["test"][3]
    assert item["labels"].item() == 1 and torch.equal(item["pixel_values"], lenient._samples["test"][4]["pixel_values"])


def test_pil_reads_what_torchvision_cannot(tmp_path):
    root = imagenet_tree(tmp_path / "in", {"val": 2})
    bmp = root / "val" / WNIDS[0] / "scan.JPEG"  # a BMP under a JPEG name: torchvision.io refuses it
    Image.new("RGB", (5, 4), (200, 10, 10)).save(bmp, format="BMP")
    assert decode_image_file(bmp)[:, 0, 0].tolist() == [200, 10, 10]
    dm = make(root, train_split=None)
    dm.setup()
    assert len(dm.datasets["test"]) == 7


def test_real_imagenette_val_archive(shared, tmp_path_factory, monkeypatch):
    archive = shared / "data" / "imagenette-val.tar.gz"
    require_shared(archive, "the Imagenette val archive")
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "shared-cache"))
    dm = make(archive, classes="imagenette", train_split=None)
    dm.setup()
    assert len(dm.datasets["test"]) == 3925 and dm.class_names == sorted(IMAGENETTE)
    assert [c["name"] for c in dm.class_info()][:2] == ["tench", "English springer"]
    assert dm.class_info()[-1] == {"label": 9, "wnid": "n03888257", "imagenet_index": 701, "name": "parachute"}
    carved = make(archive, classes="imagenette", max_per_class=20)
    carved.setup()
    assert [len(carved.datasets[s]) for s in ("train", "val", "test")] == [180, 20, 785]
