"""A plain PyTorch + timm fine-tuning script: the reference our shipped CIFAR-10 recipe is measured against.

No Lightning, no framework: the loop a careful user writes by hand, each choice a common one for short
fine-tuning of a small ImageNet CNN. It shares only what must be equal for a fair comparison with
`experiments/configs/cifar10/fine_tuning.yaml` on its study setup (200 training images per class, 128 px, 3
epochs, data seed 0): the same pretrained EfficientNet-Lite0 weights and the same training pool and test
images (read through `CIFAR10DataModule`). Its choices:

- every image of the pool trains (no validation carve-out); with `--holdout` the recipe's 10 % validation
  images are held out and scored instead, so the script can be compared with the recipe's ablations on
  validation data;
- RandomResizedCrop (scale 0.35-1) and horizontal flip at 128 px, bicubic, the backbone's mean/std;
- SGD, Nesterov momentum 0.9, lr 0.01 (`--lr`) for the backbone and 10x that for the new head, weight decay
  1e-4 (none on biases and BatchNorm), batch 32, cosine decay to zero after a 1/2-epoch linear warm-up;
- cross-entropy with label smoothing 0.1; the head initialised to zero;
- BatchNorm in training mode (`--bn eval` keeps the pretrained statistics); evaluation with the final weights.

    python -m experiments.reference.plain_finetune --root ../shared/data/cifar10-jpeg.tar.gz --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, v2

from datamodules import CIFAR10DataModule
from lightning_modules.backbones import create_backbone


class Images(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.transform(self.samples.load_image(i)), self.samples.labels[i]


def transforms(mean, std, size: int) -> tuple[v2.Compose, v2.Compose]:
    bicubic = InterpolationMode.BICUBIC
    scale = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train = v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=bicubic, antialias=True),
                        v2.RandomHorizontalFlip(), *scale])  # fmt: skip
    test = v2.Compose([v2.Resize(size, interpolation=bicubic, antialias=True), v2.CenterCrop(size), *scale])
    return train, test


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="CIFAR-10 (the JPEG archive or a folder)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data subset is fixed: data seed 0)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01, help="the backbone's learning rate (the head's is 10x)")
    parser.add_argument("--bn", choices=["train", "eval"], default="train", help="BatchNorm mode while training")
    parser.add_argument("--holdout", action="store_true", help="train on the recipe's train split, score its val split")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)

    data = CIFAR10DataModule(root=args.root, train_per_class=args.per_class, test_per_class=args.per_class,
                             seed=0, image_size=args.size)  # fmt: skip
    data.setup()
    pool = [data._split_samples("train")]
    if not args.holdout:
        pool.append(data._split_samples("val"))  # the recipe's train + val: all of the pool
    evaluated = {"test": data._split_samples("test")} | ({"val": data._split_samples("val")} if args.holdout else {})
    torch.manual_seed(args.seed)
    backbone = create_backbone("efficientnet_lite0")
    head = nn.Linear(backbone.num_features, 10)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    model = nn.Sequential(backbone, head)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # EfficientNet-Lite's preprocessing
    train_tf, test_tf = transforms(mean, std, args.size)
    train_set = torch.utils.data.ConcatDataset[tuple]([Images(samples, train_tf) for samples in pool])
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=2, generator=generator)

    def group(params: list[nn.Parameter], lr: float) -> list[dict]:  # no weight decay on biases and BatchNorm
        decayed = [p for p in params if p.ndim > 1]
        return [{"params": decayed, "lr": lr, "weight_decay": 1e-4},
                {"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0}]  # fmt: skip

    groups = group(list(backbone.parameters()), args.lr) + group(list(head.parameters()), 10 * args.lr)
    optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True)
    total = args.epochs * len(train_loader)
    warmup = len(train_loader) // 2

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start = time.perf_counter()
    model.train()
    if args.bn == "eval":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    for _ in range(args.epochs):
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    fit_seconds = time.perf_counter() - start
    model.eval()
    result: dict = {
        "seed": args.seed,
        "lr": args.lr,
        "bn": args.bn,
        "fit_seconds": round(fit_seconds, 1),
        "train_images": len(train_set),
    }
    for split, samples in evaluated.items():
        correct = 0
        with torch.no_grad():
            for images, labels in DataLoader(Images(samples, test_tf), batch_size=128, num_workers=2):
                correct += int((model(images).argmax(-1) == labels).sum())
        result |= {f"{split}/acc": correct / len(samples), f"{split}_images": len(samples)}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
