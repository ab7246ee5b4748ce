"""Benchmark 5: is the input pipeline fast enough for the model, and what batched augmentation buys.

On real CIFAR-10 images (decoded once into memory, `data.in_memory`):
- augmentation of one epoch, image by image with PIL (the classic torchvision recipe: RandomCrop(32,
  padding=4), RandomHorizontalFlip, ToTensor, Normalize) against `BatchAugment` on whole batches
  (`data.batched_augmentation`), same batch size, no model: target at least 2x;
- the training loader of `CIFAR10DataModule(in_memory, batched_augmentation)` against the model it feeds
  (ResNet-20 training steps on the same batches): loader throughput at least 3x the model's, and the
  time a training loop waits for data at most 5 % of its step time.

    python benchmarks/input_pipeline.py --data-root ../shared/data/cifar10-jpeg.tar.gz [--per-class 200]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from harness import Comparison, arguments, measure, report
from PIL import Image
from torch import nn
from torchvision import transforms

from datamodules import CIFAR10DataModule
from datamodules.batch_augment import BatchAugment
from lightning_modules.backbones import backbone_preprocessing, create_backbone

BATCH = 128


def datamodule(args: argparse.Namespace) -> CIFAR10DataModule:
    data = CIFAR10DataModule(
        root=args.data_root,
        train_per_class=args.per_class,
        batch_size=BATCH,
        num_workers=args.workers,
        in_memory=True,
        batched_augmentation=True,
        preprocessing=backbone_preprocessing("cifar_resnet20"),
    )
    data.setup("fit")
    return data


def pil_epoch(images: torch.Tensor, pre) -> float:
    recipe = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    started = time.perf_counter()
    for start in range(0, len(pictures), BATCH):
        torch.stack([recipe(picture) for picture in pictures[start : start + BATCH]])
    return time.perf_counter() - started


def batched_epoch(images: torch.Tensor, pre) -> float:
    augment = BatchAugment(pre, 32)
    samples = [{"pixel_values": image, "labels": 0, "index": i} for i, image in enumerate(images)]
    started = time.perf_counter()
    for start in range(0, len(samples), BATCH):
        augment(samples[start : start + BATCH])
    return time.perf_counter() - started


def loader_epoch(data: CIFAR10DataModule) -> float:
    started = time.perf_counter()
    for _ in data.train_dataloader():
        pass
    return time.perf_counter() - started


def training(data: CIFAR10DataModule) -> tuple[float, float]:
    """(seconds of one epoch of ResNet-20 steps fed by the loader, seconds of it spent waiting for data)."""
    torch.manual_seed(0)
    backbone = create_backbone("cifar_resnet20", pretrained=False)
    network = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10)).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    waited, started = 0.0, time.perf_counter()
    batches = iter(data.train_dataloader())
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            return time.perf_counter() - started, waited
        loss = nn.functional.cross_entropy(network(batch["pixel_values"]), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def model_epoch(data: CIFAR10DataModule) -> float:
    seconds, waited = training(data)
    return seconds - waited


def run(args: argparse.Namespace) -> list[Comparison]:
    data = datamodule(args)
    images = data._samples["train"].images  # type: ignore[attr-defined]
    pre = data.preprocessing
    augmentation = measure(
        {
            "PIL per image": functools.partial(pil_epoch, images, pre),
            "batched": functools.partial(batched_epoch, images, pre),
        },
        args.rounds,
    )
    pipeline = measure(
        {"model steps": functools.partial(model_epoch, data), "loader": functools.partial(loader_epoch, data)},
        args.rounds,
    )
    total, waited = training(data)
    note = (
        f"CIFAR-10 {len(images)} images in memory, batch {BATCH}, {args.workers} loader workers; a training epoch "
        f"waited {waited / total:.1%} of its {total:.1f} s for data"
    )
    batched = Comparison("augmentation epoch: batched vs PIL per image", "PIL per image", "batched", augmentation)
    loader = Comparison("training loader vs the model it feeds (ResNet-20)", "model steps", "loader", pipeline)
    return [
        batched.judge(">= 2x", batched.median >= 2),
        loader.judge(
            f">= 3x, data wait <= 5 % (here {waited / total:.1%})", loader.median >= 3 and waited / total <= 0.05, note
        ),
    ]


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    return parser


def main() -> None:
    args = parser().parse_args()
    report(run(args))


if __name__ == "__main__":
    main()
