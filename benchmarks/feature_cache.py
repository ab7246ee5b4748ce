"""Benchmark 2: a linear probe with `cache_features` against recomputing the frozen backbone every epoch.

Same data (un-augmented), same head initialisation, same optimizer and batch order; each round fits E
epochs each way. Reported: the per-epoch speed-up (the cached epoch after the one-off extraction), the
end-to-end speed-up over E epochs including the extraction, and whether the two heads agree: their
logits on the validation features must match within 1e-5 (the same features reach the head).

    python benchmarks/feature_cache.py --data-root ../shared/data/cifar10-jpeg.tar.gz [--per-class 50]
"""

from __future__ import annotations

import argparse
import functools

import torch
from harness import Comparison, arguments, measure, report
from lightning import seed_everything
from timing import timed_fit

from datamodules import CIFAR10DataModule
from lightning_modules import FeatureExtraction
from lightning_modules.backbones import backbone_preprocessing

WAYS = {"recompute": False, "cached": True}


def fit(cached: bool, args: argparse.Namespace, heads: dict[str, torch.nn.Module]) -> dict[str, float]:
    seed_everything(0, verbose=False)
    datamodule = CIFAR10DataModule(
        root=args.data_root,
        train_per_class=args.per_class,
        image_size=args.image_size,
        augment=False,
        num_workers=args.workers,
        batch_size=64,
        preprocessing=backbone_preprocessing(args.backbone),
    )
    model = FeatureExtraction(backbone=args.backbone, num_classes=10, cache_features=cached)
    epochs, total = timed_fit(model, datamodule, max_epochs=args.epochs)
    heads["cached" if cached else "recompute"] = model.head
    return {"epoch": min(epochs[1:] or epochs), "total": total}


def logits_gap(heads: dict[str, torch.nn.Module], args: argparse.Namespace) -> float:
    """Largest difference of the two heads' logits on features of real validation images."""
    datamodule = CIFAR10DataModule(
        root=args.data_root,
        train_per_class=args.per_class,
        image_size=args.image_size,
        augment=False,
        batch_size=64,
        preprocessing=backbone_preprocessing(args.backbone),
    )
    datamodule.setup("fit")
    backbone = FeatureExtraction(backbone=args.backbone, num_classes=10).backbone.eval()
    with torch.no_grad():
        features = torch.cat([backbone(batch["pixel_values"]) for batch in datamodule.val_dataloader()])
        return float((heads["cached"](features) - heads["recompute"](features)).abs().max())


def run(args: argparse.Namespace) -> list[Comparison]:
    heads: dict[str, torch.nn.Module] = {}
    samples = measure({way: functools.partial(fit, cached, args, heads) for way, cached in WAYS.items()}, args.rounds)
    gap = logits_gap(heads, args)
    note = (
        f"{args.backbone} at {args.image_size} px, CIFAR-10 {args.per_class}/class, {args.epochs} epochs per fit; "
        f"head logits differ by at most {gap:.1e} ({'within' if gap <= 1e-5 else 'NOT within'} 1e-5)"
    )
    epoch = Comparison("linear probe, one epoch", "recompute epoch", "cached epoch", samples)
    total = Comparison(
        f"linear probe, {args.epochs} epochs incl. extraction", "recompute total", "cached total", samples
    )
    return [
        epoch.judge(">= 50x", epoch.median >= 50 and gap <= 1e-5, note),
        total.judge(f">= {0.5 * args.epochs:g}x (0.5 x epochs)", total.median >= 0.5 * args.epochs),
    ]


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    return parser


def main() -> None:
    args = parser().parse_args()
    report(run(args))


if __name__ == "__main__":
    main()
