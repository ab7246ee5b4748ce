"""Tiny ImageNet-layout trees of real JPEGs for tests (on the path through pytest's `pythonpath`)."""

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import encode_jpeg

from datamodules.imagenet_classes import IMAGENETTE


def write_jpeg(path: Path, label: int, seed: int = 0, size: int = 24) -> None:
    """A real JPEG whose red channel encodes `label` (0 to 10, plus a little noise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = torch.randint(0, 20, (3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    image = noise + torch.tensor([20 + 20 * label, 100, 120], dtype=torch.uint8)[:, None, None]
    path.write_bytes(encode_jpeg(image).numpy().tobytes())


def imagenet_tree(root: Path, per_split: dict[str, int], classes: Sequence[str] = IMAGENETTE[:3]) -> Path:
    """`root/<split>/<class>/<class>_<k>.JPEG` with `per_split[split]` images per class."""
    for s, (split, count) in enumerate(per_split.items()):
        for label, name in enumerate(classes):
            for k in range(count):
                write_jpeg(root / split / name / f"{name}_{k}.JPEG", label, seed=10_000 * s + 100 * label + k)
    return root
