"""Linear probe per epoch: `cache_features: true` vs recomputing the frozen backbone every epoch.

Same data (un-augmented), same head, same optimizer; epochs of the two ways are interleaved in pairs
and the ratio of each pair reported (median and min), with the one-off extraction cost beside it.

    python benchmarks/feature_cache.py --data-root ../shared/data/cifar10-jpeg.tar.gz --per-class 100
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from timing import timed_fit

from datamodules import CIFAR10DataModule
from lightning_modules import FeatureExtraction
from lightning_modules.backbones import backbone_preprocessing


def epoch_time(cached: bool, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds of one training epoch, seconds of everything before it: setup and extraction)."""
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
    (epoch,), total = timed_fit(model, datamodule, max_epochs=1)
    return epoch, total - epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    ratios, live, cached, extraction = [], [], [], []
    for _ in range(args.pairs):
        live_epoch, _ = epoch_time(False, args)
        cached_epoch, cached_setup = epoch_time(True, args)
        live.append(live_epoch)
        cached.append(cached_epoch)
        extraction.append(cached_setup)
        ratios.append(live_epoch / cached_epoch)
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{args.backbone}, CIFAR-10 {args.per_class}/class, {args.image_size} px, {args.pairs} interleaved pairs\n")
    print("| way | train epoch (median) | setup incl. extraction (median) |\n|---|---|---|")
    print(f"| recompute frozen backbone | {statistics.median(live):.2f} s | |")
    print(f"| cached features | {statistics.median(cached):.3f} s | {statistics.median(extraction):.1f} s |")
    print(f"\nper-epoch speedup: median {statistics.median(ratios):.0f}x, min {min(ratios):.0f}x")


if __name__ == "__main__":
    main()
