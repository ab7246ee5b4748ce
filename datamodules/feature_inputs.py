"""The feature-cache hook of a datamodule: train and val served as precomputed backbone features.

A frozen backbone gives the same features every epoch, so a strategy that trains only a head (linear
probe) encodes each row once and trains on `{"features", "labels", "index"}` batches. Test and predict
loaders stay on the raw inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from datamodules.datasets import FeatureDataset, collate_batched
from datamodules.samplers import EpochSeededRandomSampler, make_loader

# (feature set name, unshuffled un-augmented loader over its rows) -> features [rows, D] in loader order
InputEncoder = Callable[[str, DataLoader], torch.Tensor]


class FeatureInputs:
    """Mixin of a datamodule that can serve features instead of inputs.

    The datamodule provides `batch_size` and `feature_source(name)`; a feature set is named by its split
    ("train", "val"), or by a name of the datamodule's choosing where a split has several sets (text:
    "val_0", "val_1"). The encoder is called as `encoder(name, loader)`, once per name (memoized) until
    another encoder is set.
    """

    batch_size: int
    _encoder: InputEncoder | None = None
    _features: dict[str, torch.Tensor]

    @property
    def input_encoder(self) -> InputEncoder | None:
        return self._encoder

    def set_input_encoder(self, encoder: InputEncoder | None) -> None:
        """Serve train/val as `{"features", "labels", "index"}` from `encoder(name, feature_source(name)[0])`.

        None switches back to the raw inputs.
        """
        if encoder is not self._encoder:
            self._features = {}
        self._encoder = encoder

    def feature_source(self, name: str) -> tuple[DataLoader, torch.Tensor]:
        """An unshuffled, un-augmented loader over the rows of feature set `name`, and their labels."""
        raise NotImplementedError

    def feature_loader(self, name: str, shuffle: bool = False) -> DataLoader:
        """Batches of feature set `name` (shuffled per epoch with `shuffle`), encoded on first use."""
        loader, labels = self.feature_source(name)
        if name not in self._features:
            assert self._encoder is not None, "set_input_encoder first"
            features = self._encoder(name, loader)
            if not isinstance(features, torch.Tensor) or features.ndim != 2 or len(features) != len(labels):
                shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise ValueError(f"input encoder returned {shape} for the {name} split; expected [{len(labels)}, D]")
            self._features[name] = features.detach().cpu()
        dataset = FeatureDataset(self._features[name], labels)
        # In memory already: worker processes would only add start-up time.
        sampler = EpochSeededRandomSampler(dataset) if shuffle else None
        return make_loader(
            self, dataset, batch_size=self.batch_size, seed=getattr(self, "seed", 0), train_sampler=sampler,
            collate_fn=collate_batched,
        )  # fmt: skip
