"""Training augmentation of a whole batch at once: the CIFAR recipe of `image_transform`, on one tensor.

For small images the per-sample transform (resize, reflect-padded random crop, flip, normalise: a dozen
small tensor ops per image) costs more than the network's step on them; here each op runs once per
batch. Each sample's crop offset and flip come from its own seed (`SampleIndex`, via the dataset's
`seed` entry), so a batch looks the same whichever worker builds it, and after a resume.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.transforms import Preprocessing


def _resize(images: Tensor, size: int, mode: str) -> Tensor:
    """Shorter side to `size`, then the centre `size` x `size` (as Resize + CenterCrop)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    images = F.interpolate(images, size=new, mode=mode, antialias=mode in ("bilinear", "bicubic"))
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return images[..., top : top + size, left : left + size]


class BatchAugment:
    """Collate of `{"pixel_values": uint8 [3, h, w], "labels", "index"[, "seed"]}` samples of one size into
    the training batch: float images of `image_size`, augmented (when `augment`) and normalised.

    Args:
        preprocessing: The backbone's mean, std and interpolation.
        image_size: Side of the square output.
        augment: Reflect-padded random crop (1/8 of the side) and, with `flip`, a horizontal flip.
    """

    def __init__(self, preprocessing: Preprocessing, image_size: int, augment: bool = True, flip: bool = True):
        self.image_size = image_size
        self.augment = augment
        self.flip = flip
        self.mode = preprocessing.interpolation
        self.mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)

    def draws(self, seeds: list[int | None], pad: int) -> tuple[Tensor, Tensor]:
        """Per sample: crop offsets (y, x) in [0, 2 pad] and whether to flip, from its seed."""
        offsets, flips = torch.empty(len(seeds), 2, dtype=torch.int64), torch.zeros(len(seeds), dtype=torch.bool)
        for i, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            offsets[i] = torch.randint(0, 2 * pad + 1, (2,), generator=generator)
            flips[i] = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        return offsets, flips

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Tensor]:
        images = torch.stack([s["pixel_values"] for s in samples]).float().div_(255)
        images = _resize(images, self.image_size, self.mode)
        if self.augment:
            pad = max(1, self.image_size // 8)
            padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
            offsets, flips = self.draws([_seed(s) for s in samples], pad)
            size = self.image_size
            images = torch.stack(
                [padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())]
            )
            images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
        return {
            "pixel_values": (images - self.mean) / self.std,
            "labels": torch.stack([torch.as_tensor(s["labels"]) for s in samples]),
            "index": torch.stack([torch.as_tensor(s["index"]) for s in samples]),
        }


def _seed(sample: dict[str, Any]) -> int | None:
    seed = sample.get("seed")
    return None if seed is None else int(seed)
