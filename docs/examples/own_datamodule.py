"""A datamodule of your own: labelled images from one NumPy file.

`TransferDataModule` does the per-class caps, the stratified validation split, label checks, transforms,
resumable loaders, fingerprints, the feature cache and corruption test sets; a subclass says only what its
classes are and how to load its training pool and test split. (A folder of images per class needs no code:
`ImageFolderDataModule`.)"""

import numpy as np
import torch

from datamodules.base import TransferDataModule
from datamodules.datasets import TensorImageDataset


class NpzImages(TransferDataModule):
    """`root` is an .npz file with `classes` (names), `train_images` / `test_images` (uint8 [N, H, W, 3]) and
    `train_labels` / `test_labels` (integers into `classes`)."""

    def _arrays(self):
        return np.load(self.root)  # no pickles: np.load refuses object arrays by default

    @property
    def class_names(self) -> list[str]:
        return [str(name) for name in self._arrays()["classes"]]

    def load_splits(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        arrays = self._arrays()

        def split(name: str) -> TensorImageDataset:
            images = torch.from_numpy(arrays[f"{name}_images"]).permute(0, 3, 1, 2).contiguous()
            return TensorImageDataset(images, torch.from_numpy(arrays[f"{name}_labels"]).long())

        return split("train"), split("test")


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    from lightning import Trainer

    from lightning_modules import FineTuning, backbone_preprocessing

    rng = np.random.default_rng(0)  # two classes told apart by brightness, for the example
    labels = rng.integers(0, 2, 120)
    images = (labels[:, None, None, None] * 120 + rng.integers(0, 100, (120, 16, 16, 3))).astype(np.uint8)
    path = Path(tempfile.mkdtemp()) / "shapes.npz"
    np.savez(path, classes=np.array(["dark", "bright"]), train_images=images[:80], train_labels=labels[:80],
             test_images=images[80:], test_labels=labels[80:])  # fmt: skip

    data = NpzImages(root=str(path), batch_size=16, preprocessing=backbone_preprocessing("tiny_cnn"))
    model = FineTuning(backbone="tiny_cnn", pretrained=False, num_classes=len(data.class_names))
    trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    print(trainer.test(model, datamodule=data, verbose=False))
