import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from datamodules.image_folder import ImageFolderDataset, scan_image_folder


def write_image(path: Path, value: int, size: int = 8, channels: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = torch.full((channels, size, size), value, dtype=torch.uint8)
    encoded = encode_png(image) if path.suffix.lower() == ".png" else encode_jpeg(image)
    path.write_bytes(encoded.numpy().tobytes())


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "images"
    write_image(root / "zebra" / "b.JPG", 200)
    write_image(root / "zebra" / "a.jpeg", 180)
    write_image(root / "ant" / "sub" / "x.png", 10, channels=1)  # greyscale, nested
    write_image(root / "ant" / "c.png", 20)
    (root / "ant" / "notes.txt").write_text("not an image")
    write_image(root / "ant" / ".hidden.png", 0)
    (root / ".cache").mkdir()
    return root


def test_scan_sorts_classes_and_files_and_filters_extensions(tree):
    scan = scan_image_folder(tree)
    assert scan.class_names == ["ant", "zebra"]
    assert scan.files == ["ant/c.png", "ant/sub/x.png", "zebra/a.jpeg", "zebra/b.JPG"]
    assert scan.labels == [0, 0, 1, 1]
    assert scan.sizes == [(tree / f).stat().st_size for f in scan.files]


def test_scan_with_explicit_classes_keeps_their_order(tree):
    scan = scan_image_folder(tree, classes=["zebra", "ant"])
    assert scan.labels == [0, 0, 1, 1] and scan.files[0] == "zebra/a.jpeg"
    with pytest.raises(FileNotFoundError, match="lion"):
        scan_image_folder(tree, classes=["ant", "lion"])


def test_empty_class_folder_is_an_error_naming_it(tree):
    (tree / "empty_class").mkdir()
    (tree / "empty_class" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"empty_class.* holds no images"):
        scan_image_folder(tree)


def test_missing_or_classless_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        scan_image_folder(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        scan_image_folder(tmp_path / "flat")


def test_dataset_decodes_rgb_uint8_and_applies_transform(tree):
    dataset = ImageFolderDataset.from_scan(scan_image_folder(tree))
    item = dataset[1]  # the greyscale PNG comes back as 3 channels
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 8, 8)
    assert item["pixel_values"].unique().tolist() == [10]
    assert item["labels"].item() == 0 and item["index"].item() == 1
    halves = dataset.with_transform(lambda image: image.float() / 2)
    assert halves[1]["pixel_values"].unique().tolist() == [5.0]
    assert dataset[1]["pixel_values"].dtype == torch.uint8  # original untouched


def test_subset_keeps_order_and_labels(tree):
    subset = ImageFolderDataset.from_scan(scan_image_folder(tree)).subset([3, 0])
    assert subset.files.tolist() == ["zebra/b.JPG", "ant/c.png"]
    assert subset.labels.tolist() == [1, 0] and subset[0]["index"].item() == 0


def test_corrupt_image_names_the_file(tree):
    (tree / "ant" / "c.png").write_bytes(b"not a png")
    dataset = ImageFolderDataset.from_scan(scan_image_folder(tree))
    with pytest.raises(RuntimeError, match="c.png"):
        dataset[0]


def fingerprint(dataset: ImageFolderDataset) -> str:
    digest = hashlib.sha256()
    dataset.update_fingerprint(digest)
    return digest.hexdigest()


def test_fingerprint_ignores_location_but_not_content(tree, tmp_path):
    moved = shutil.copytree(tree, tmp_path / "elsewhere" / "copy")
    a = ImageFolderDataset.from_scan(scan_image_folder(tree))
    b = ImageFolderDataset.from_scan(scan_image_folder(moved))
    assert fingerprint(a) == fingerprint(b)
    noise = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (moved / "ant" / "c.png").write_bytes(encode_png(noise).numpy().tobytes())  # same name, new size
    assert fingerprint(a) != fingerprint(ImageFolderDataset.from_scan(scan_image_folder(moved)))
