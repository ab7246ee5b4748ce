"""What a backbone expects of its input images, and the transforms that deliver it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Input contract of a backbone: resolution, normalisation and resize interpolation for images; the
    tokenizer for text.

    Linked at parse time from `model.backbone` into `data.preprocessing` (a pure lookup, no files),
    so the data always matches the model without being written twice.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    tokenizer: str | None = None  # text backbones: the tokenizer name or local path (AutoTokenizer)


def image_transform(
    preprocessing: Preprocessing, image_size: int, train: bool, augment: bool, flip: bool = True
) -> v2.Compose:
    """uint8 CHW tensor -> normalised float tensor of `image_size` x `image_size`.

    Training augmentation is the CIFAR recipe scaled to the target size (reflect-padded random crop of
    1/8 of the side, horizontal flip when the data allows it), cheap enough for 2 CPU cores.
    """
    interpolation = InterpolationMode(preprocessing.interpolation)
    steps: list[torch.nn.Module] = [v2.Resize(image_size, interpolation=interpolation, antialias=True)]
    steps.append(v2.CenterCrop(image_size))
    if train and augment:
        steps.append(v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing.mean, preprocessing.std)]
    return v2.Compose(steps)
