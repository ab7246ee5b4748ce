"""What a backbone expects of its input images, and the transforms that deliver it."""

from __future__ import annotations

from collections.abc import Callable
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
    preprocessing: Preprocessing,
    image_size: int,
    train: bool,
    augment: bool,
    flip: bool = True,
    crop_scale: float | None = None,
) -> v2.Compose:
    """uint8 CHW tensor -> normalised float tensor of `image_size` x `image_size`.

    Training augmentation is the CIFAR recipe scaled to the target size (reflect-padded random crop of
    1/8 of the side), or with `crop_scale` the ImageNet one (a random crop of `crop_scale` to all of the
    image's area and of aspect 3/4 to 4/3, resized); then a horizontal flip when the data allows it.
    """
    augmenting = train and augment
    if augmenting and crop_scale is not None:
        interpolation = InterpolationMode(preprocessing.interpolation)
        steps: list[torch.nn.Module] = [
            v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), interpolation=interpolation, antialias=True)
        ]
    else:
        steps = list(resize_crop(preprocessing, image_size).transforms)
        if augmenting:
            steps.append(v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"))
    if augmenting and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += normalize(preprocessing).transforms
    return v2.Compose(steps)


def resize_crop(preprocessing: Preprocessing, image_size: int) -> v2.Compose:
    """uint8 CHW tensor -> uint8 `image_size` x `image_size`: resize the short side, crop the centre."""
    interpolation = InterpolationMode(preprocessing.interpolation)
    return v2.Compose([v2.Resize(image_size, interpolation=interpolation, antialias=True), v2.CenterCrop(image_size)])


def normalize(preprocessing: Preprocessing) -> v2.Compose:
    """uint8 tensor -> float in [0, 1], normalised with the backbone's mean and std."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing.mean, preprocessing.std)])


def simclr_transform(
    preprocessing: Preprocessing, image_size: int, flip: bool = True, blur: bool | None = None
) -> v2.Compose:
    """uint8 CHW tensor -> one SimCLR view (Chen et al. 2020, appendix A; CIFAR strength s = 0.5): random
    resized crop of 8-100 % of the area, horizontal flip when the data allows it, colour jitter
    (0.4, 0.4, 0.4, 0.1) with p 0.8, greyscale with p 0.2, and Gaussian blur (kernel 10 % of the side,
    p 0.5) only above 32 px: the paper drops it for CIFAR-sized images. `blur` forces it on or off."""
    interpolation = InterpolationMode(preprocessing.interpolation)
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=interpolation, antialias=True)
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    if image_size > 32 if blur is None else blur:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)  # odd
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing.mean, preprocessing.std)]
    return v2.Compose(steps)


class MultiView:
    """`views` independent draws of `transform`, stacked: [views, C, H, W] per image (contrastive pairs)."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], views: int):
        self.transform = transform
        self.views = views

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.views)])


def apply_transform(
    transform: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int | None
) -> torch.Tensor:
    """`transform(image)`, its random draws taken from `seed` when given (and the global CPU generator left
    as it was), so a sample's augmentation does not depend on which process draws it, or when."""
    if seed is None:
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # CPU only: a CUDA generator keeps its stream
        return transform(image)
