"""Item 10: bad data stops early naming what is wrong: a CIFAR-10 batch file that fails its checksum is never
unpickled; unreadable images in an ImageFolder are named (error) or counted and named (skip); labels out of
range, and GLUE's -1 "no label" in a training split, stop setup naming the split and the value."""

import hashlib
import importlib.machinery
import json
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as torchvision_cifar
from image_trees import imagenet_tree
from PIL import Image
from support import TINY_GLUE, TINY_RUN
from torchvision.datasets import CIFAR10

from datamodules import CIFAR10DataModule, GLUEDataModule, ImageFolderDataModule, Preprocessing
from datamodules.cifar10 import BATCHES_FOLDER, CIFAR10_CLASSES
from datamodules.decode import UnreadableImageError, decode_image_file, pil_to_rgb
from experiments.cli import CONFIGS, cli_main

SMALL = Preprocessing(image_size=32)
GLUE_FIXTURES = Path(__file__).parents[1] / "datamodules" / "fixtures" / "glue"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def batches(tmp_path, monkeypatch) -> Path:
    """torchvision's CIFAR-10 layout with 2 images per class per batch, registered as the official files: the
    published MD5 table is replaced by these files' sums (the real batches are 180 MB)."""
    root = tmp_path / "cifar"
    folder = root / BATCHES_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [label for label in range(10) for _ in range(2)]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    register(monkeypatch, folder)
    return root


def register(monkeypatch, folder: Path) -> None:
    sums = {p.name: md5(p) for p in folder.iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": sums["batches.meta"]})


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def cifar(root, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(root=str(root), num_workers=0, batch_size=4, preprocessing=SMALL, **kwargs)


def no_unpickling_nor_download(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickled or downloaded a file that failed its checksum")

    monkeypatch.setattr(torchvision_cifar.pickle, "load", forbidden)
    monkeypatch.setattr(CIFAR10, "download", forbidden)


def test_cifar_batches_whose_checksums_match_load(batches):
    dm = cifar(batches)
    dm.setup("fit")
    assert dm.num_classes == 10 and len(dm._samples["train"]) + len(dm._samples["val"]) == 100


@pytest.mark.parametrize("download", [False, True])
def test_a_flipped_byte_in_a_cifar_batch_fails_the_checksum_before_unpickling(batches, download, monkeypatch):
    path = batches / BATCHES_FOLDER / "data_batch_3"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    no_unpickling_nor_download(monkeypatch)
    with pytest.raises(ValueError, match=rf"data.root: {path} fails its checksum \(MD5 {md5(path)}, CIFAR-10's is"):
        cifar(batches, download=download).setup("fit")


def test_a_cifar_batch_replaced_by_a_code_running_pickle_is_never_unpickled(batches, tmp_path):
    path = batches / BATCHES_FOLDER / "test_batch"
    path.write_bytes(pickle.dumps(Payload(tmp_path / "PWNED")))
    with pytest.raises(ValueError, match="test_batch fails its checksum"):
        cifar(batches, download=False).setup("test")
    assert not (tmp_path / "PWNED").exists()


def test_a_label_out_of_range_stops_setup_naming_the_split_and_value(batches, monkeypatch):
    path = batches / BATCHES_FOLDER / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][5] = 10
    path.write_bytes(pickle.dumps(batch))
    register(monkeypatch, path.parent)  # a batch with a valid checksum, holding a bad label
    with pytest.raises(ValueError, match=r"train split: label 10 \(sample 25\) is outside \[0, 10\)"):
        cifar(batches).setup("fit")


@pytest.fixture
def damaged(tmp_path) -> Path:
    """A user's image folders with a truncated JPEG and a text file named .jpg among real images."""
    root = imagenet_tree(tmp_path / "images", {"train": 4, "test": 2}, classes=["cat", "dog"])
    cat = root / "train" / "cat" / "cat_1.JPEG"
    cat.write_bytes(cat.read_bytes()[:100])
    (root / "train" / "dog" / "dog_9.jpg").write_text("not an image\n")
    return root


def folders(root, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(root=str(root), num_workers=0, batch_size=2, preprocessing=SMALL, **kwargs)


def test_unreadable_images_stop_setup_naming_each_path(damaged):
    with pytest.raises(UnreadableImageError, match=r"cat_1.JPEG: .*1 more unreadable.*dog_9.jpg"):
        folders(damaged).setup("fit")


def test_unreadable_images_are_counted_named_and_left_out_when_skipping(damaged):
    dm = folders(damaged, on_bad_file="skip")
    with pytest.warns(UserWarning, match=r"left out 2 unreadable image files"):
        dm.setup("fit")
    assert sorted(Path(p).name for p in dm.skipped_files) == ["cat_1.JPEG", "dog_9.jpg"]
    assert len(dm._samples["train"]) + len(dm._samples["val"]) == 7  # 8 real images, one of them truncated
    assert sum(len(b["labels"]) for b in dm.train_dataloader()) == len(dm._samples["train"])  # all decode


def test_glue_minus_one_in_a_training_file_stops_setup_naming_split_and_value(tmp_path):
    root = tmp_path / "glue"
    shutil.copytree(GLUE_FIXTURES / "SST-2", root / "SST-2")
    path = root / "SST-2" / "train.tsv"
    path.write_text(path.read_text().replace("dull \t0", "dull \t-1", 1))
    dm = GLUEDataModule(task="sst2", root=str(root), preprocessing=Preprocessing(tokenizer="unused"))
    with pytest.raises(ValueError, match=r"sst2 train split .*SST-2/train.tsv line 3.*label -1 is outside \[0, 2\)"):
        dm.rows("train")


def test_glue_minus_one_in_a_hugging_face_training_split_stops_naming_split_row_and_value(monkeypatch):
    table = {"sentence": ["good", "bad", "fine"], "label": [1, -1, 0], "idx": [0, 1, 2]}
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    module.load_dataset = lambda *args: {"train": table, "validation": table, "test": table}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    dm = GLUEDataModule(task="sst2", preprocessing=Preprocessing(tokenizer="unused"))
    where = r"sst2 train split \(Hugging Face glue/sst2 train\)"
    with pytest.raises(ValueError, match=rf"{where} row 1: label -1 is outside"):
        dm.rows("train")
    assert dm.rows("test")[0].labels.tolist() == [-1, -1, -1]  # the test split's -1 means "no label": not an error


def test_a_16_bit_image_decodes_to_the_8_bit_image_it_holds(tmp_path):
    wide = np.random.default_rng(0).integers(0, 65536, (24, 24), dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")  # a 16-bit PNG: torchvision decodes it to uint16
    Image.fromarray((wide >> 8).astype(np.uint8)).save(tmp_path / "narrow.png")
    narrow = decode_image_file(tmp_path / "narrow.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I") and narrow.dtype == torch.uint8
    assert torch.equal(decode_image_file(tmp_path / "wide.png"), narrow)
    with Image.open(tmp_path / "wide.png") as image:  # PIL's own convert("RGB") would clip at 255
        assert torch.equal(pil_to_rgb(image), narrow)


@pytest.mark.parametrize(
    "options",
    [{}, {"in_memory": True}, {"batched_augmentation": True}, {"in_memory": True, "batched_augmentation": True}],
    ids=["per-image", "in-memory", "batched", "in-memory-batched"],
)
def test_a_16_bit_png_among_jpegs_trains_exactly_like_its_8_bit_twin(tmp_path, options):
    wide = np.random.default_rng(1).integers(0, 65536, (24, 24), dtype=np.uint16)

    def first_batches(name: str, image: np.ndarray) -> list[torch.Tensor]:
        root = imagenet_tree(tmp_path / name, {"train": 4, "test": 2}, classes=["cat", "dog"])
        Image.fromarray(image).save(root / "train" / "cat" / "cat_16bit.png")
        data = folders(root, val_fraction=0.25, **options)
        data.setup("fit")
        return [batch["pixel_values"] for batch in data.train_dataloader()]

    sixteen, eight = first_batches("wide", wide), first_batches("narrow", (wide >> 8).astype(np.uint8))
    assert len(sixteen) == len(eight) and all(torch.equal(a, b) for a, b in zip(sixteen, eight, strict=True))
    assert max(batch.abs().max().item() for batch in sixteen) < 5  # normalised, not 257 times too bright


RTE_DATA = {  # file -> (how it is broken, what the message names)
    "header-only": ("train.tsv", lambda text: text.splitlines()[0] + "\n", "train.tsv has a header but no rows"),
    "empty": ("train.tsv", lambda text: "", "train.tsv is empty"),
    "latin-1": ("train.tsv", lambda text: text + "9\tCaf\xe9 au lait.\tA drink.\tentailment\n", "train.tsv line"),
    "duplicate-id": ("test.tsv", lambda text: text + text.splitlines()[1] + "\n", "test.tsv line"),
}


@pytest.mark.parametrize("case", RTE_DATA)
def test_bad_text_data_exits_2_naming_file_and_line_and_creates_nothing(case, tmp_path, monkeypatch, capsys):
    name, damage, named = RTE_DATA[case]
    root = tmp_path / "glue"
    shutil.copytree(GLUE_FIXTURES / "RTE", root / "RTE")
    encoding = "latin-1" if case == "latin-1" else "utf-8"
    (root / "RTE" / name).write_bytes(damage((root / "RTE" / name).read_text()).encode(encoding))
    monkeypatch.chdir(tmp_path)
    command = "predict" if name == "test.tsv" else "fit"
    config = ["-c", str(CONFIGS / "glue" / "rte.yaml"), *TINY_GLUE, "--data.init_args.root", str(root)]
    with pytest.raises(SystemExit) as raised:
        cli_main([command, *config])
    error = capsys.readouterr().err
    assert raised.value.code == 2 and named in error, error[-2000:]
    details = {"latin-1": "is not UTF-8 (byte b'\\xe9'", "duplicate-id": "repeats the id 0 of line 2"}
    assert details.get(case, "") in error
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wandb").exists()


def one_class_folder(tmp_path) -> list[str]:
    imagenet_tree(tmp_path / "images", {"train": 4, "test": 2}, classes=["cat"])
    return ["--data", "ImageFolderDataModule", "--data.root", str(tmp_path / "images")]


def three_class_checkpoint(tmp_path) -> list[str]:
    cli_main(["fit", *TINY_RUN, "--data.num_classes", "3", "--trainer.max_epochs", "1"])
    return ["--ckpt_path", str(shutil.copy(next((tmp_path / "runs").rglob("last.ckpt")), tmp_path / "three.ckpt"))]


MISMATCHES = {  # the arguments added to a tiny run (4 classes), and what the message says
    "one-class-folder": (one_class_folder, "holds one class folder (cat): a classifier needs at least two"),
    "num-classes-given": (lambda tmp_path: ["--model.num_classes", "3"], "model.num_classes=3, but the data"),
    # `test` maps labels by class name (a cross-dataset test): a class the model does not know is named
    "checkpoint-of-3-classes": (three_class_checkpoint, "the test data's classes ['class_3'] are not among the 3"),
    "checkpoint-of-3-classes-validate": (three_class_checkpoint, "holds a model of 3 classes, but the data (Synthetic"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_data_that_does_not_fit_the_model_exits_2_with_one_line(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make, named = MISMATCHES[case]
    extra = make(tmp_path)
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        command = "fit" if "--ckpt_path" not in extra else "validate" if case.endswith("validate") else "test"
        cli_main([command, *TINY_RUN, *extra])
    error = capsys.readouterr().err
    assert raised.value.code == 2 and named in error, error[-2000:]
    assert "usage:" not in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def test_a_glue_folder_without_test_files_fits_and_only_predict_asks_for_them(tmp_path, monkeypatch, capsys):
    root = tmp_path / "glue"
    shutil.copytree(GLUE_FIXTURES / "RTE", root / "RTE")
    (root / "RTE" / "test.tsv").unlink()  # train and dev only, as many keep GLUE
    monkeypatch.chdir(tmp_path)
    config = ["-c", str(CONFIGS / "glue" / "rte.yaml"), *TINY_GLUE, "--data.init_args.root", str(root)]
    quick = [
        "-c",
        str(CONFIGS / "logger" / "csv.yaml"),
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    cli_main(["fit", *config, *quick])
    metadata = json.loads(next((tmp_path / "runs").rglob("run_metadata.json")).read_text())
    assert len(metadata["data_fingerprint"]) == 64
    with pytest.raises(SystemExit) as raised:
        cli_main(["predict", *config, *quick])
    assert (
        raised.value.code == 2
        and f"rte test split: {root / 'RTE' / 'test.tsv'} does not exist" in capsys.readouterr().err
    )


def test_a_checkpoint_tested_on_unnamed_data_of_another_class_count_exits_2(tmp_path, monkeypatch, capsys):
    """A GLUE checkpoint (its class names recorded) tested on a text file with three labels and no class names."""
    monkeypatch.chdir(tmp_path)
    rte = ["-c", str(CONFIGS / "glue" / "rte.yaml"), *TINY_GLUE, "-c", str(CONFIGS / "logger" / "csv.yaml")]
    cli_main(["fit", *rte, "--trainer.max_steps", "1", "--checkpoint.dirpath", "ckpt"])
    (tmp_path / "three.csv").write_text("text,label\ngood,0\nfine,1\nbad,2\n")
    files = [f"--data.init_args.{split}_file=three.csv" for split in ("train", "val", "test")]
    text = ["--data", "TextDataModule", *files, "--data.init_args.text_columns", "[text]",
            "--data.init_args.label_column", "label", "--data.init_args.num_classes", "3"]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        cli_main(["test", *rte, *text, "--ckpt_path", "ckpt/last.ckpt"])
    error = capsys.readouterr().err
    assert raised.value.code == 2 and "holds a model of 2 classes, but the data (TextDataModule) has 3" in error, error
