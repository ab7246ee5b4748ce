import pytest
import torch
from image_trees import write_jpeg

from datamodules import SyntheticDataModule
from datamodules.batch_augment import BatchAugment
from datamodules.datasets import TensorImageDataset
from datamodules.image_folder import ImageFolderDataset, scan_image_folder
from datamodules.transforms import Preprocessing, image_transform

PRE = Preprocessing(image_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def samples(n=6, size=16, seeds=True):
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return [
        {"pixel_values": images[i], "labels": torch.tensor(i % 3), "index": torch.tensor(i)}
        | ({"seed": torch.tensor(1000 + i)} if seeds else {})
        for i in range(n)
    ]


@pytest.mark.parametrize(("size", "atol"), [(16, 1e-6), (32, 0.05)])  # 32: resized (the per-image path rounds to uint8)
def test_without_augmentation_it_equals_the_per_image_transform(size, atol):
    batch = BatchAugment(PRE, size, augment=False)(samples())
    per_image = image_transform(PRE, size, train=False, augment=False)
    expected = torch.stack([per_image(s["pixel_values"]) for s in samples()])
    assert batch["pixel_values"].shape == (6, 3, size, size)
    assert torch.allclose(batch["pixel_values"], expected, atol=atol)
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2] and batch["index"].tolist() == list(range(6))


def test_each_image_is_a_reflect_padded_crop_maybe_flipped_drawn_from_its_seed():
    augment = BatchAugment(PRE, 16)
    out = augment(samples())["pixel_values"]
    normalised = BatchAugment(PRE, 16, augment=False)(samples())["pixel_values"]
    padded = torch.nn.functional.pad(normalised, (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        crops = [padded[i, :, y : y + 16, x : x + 16] for y in range(5) for x in range(5)]
        assert any(torch.allclose(out[i], c, atol=1e-6) or torch.allclose(out[i], c.flip(-1), atol=1e-6) for c in crops)
    assert torch.equal(augment(samples())["pixel_values"], out)  # the seeds decide
    reseeded = [s | {"seed": torch.tensor(7 + i)} for i, s in enumerate(samples())]
    assert not torch.equal(augment(reseeded)["pixel_values"], out)
    assert not torch.equal(out, normalised)


def test_the_datamodule_serves_batched_augmented_in_memory_batches_by_seed():
    def first_batch(**kwargs):
        torch.manual_seed(0)
        data = SyntheticDataModule(num_samples=64, batch_size=8, num_workers=0, **kwargs)
        data.setup("fit")
        return data, next(iter(data.train_dataloader()))

    data, batch = first_batch(in_memory=True, batched_augmentation=True)
    assert set(batch) == {"pixel_values", "labels", "index"} and batch["pixel_values"].shape == (8, 3, 16, 16)
    assert batch["pixel_values"].dtype == torch.float32
    _, again = first_batch(in_memory=True, batched_augmentation=True)
    assert torch.equal(batch["pixel_values"], again["pixel_values"])  # per-sample seeds, not the global stream
    _, per_image = first_batch()
    assert torch.equal(batch["index"], per_image["index"])  # the same samples in the same order
    with pytest.raises(ValueError, match="batched_augmentation"):
        SyntheticDataModule(views=2, batched_augmentation=True)


def test_in_memory_decodes_files_once_into_the_same_images_and_refuses_mixed_sizes(tmp_path):
    for i in range(4):
        write_jpeg(tmp_path / "images" / f"class{i % 2}" / f"{i}.jpg", i % 2, seed=i, size=12)
    files = ImageFolderDataset.from_scan(scan_image_folder(tmp_path / "images"))
    memory = TensorImageDataset.decoded(files)
    assert memory.images.shape == (4, 3, 12, 12) and torch.equal(memory.labels, files.labels)
    assert all(torch.equal(memory.load_image(i), files.load_image(i)) for i in range(4))
    write_jpeg(tmp_path / "images" / "class0" / "big.jpg", 0, size=20)
    with pytest.raises(ValueError, match="in_memory needs images of one size"):
        TensorImageDataset.decoded(ImageFolderDataset.from_scan(scan_image_folder(tmp_path / "images")))
