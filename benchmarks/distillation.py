"""Distillation epoch cost: plain cross-entropy vs KD with a live teacher vs KD with cached teacher logits.

Same student (`Distillation` with alpha 0 for plain training: the same code without the teacher), same
data (un-augmented, which the cache requires), same optimizer. Each round trains one fit of each way,
rounds interleaved; the last epoch of each fit is timed (the first warms up workers and kernels). Reported:
medians, the ratios cached / plain (target <= 1.1) and live / cached (target: at least 0.8 x (1 + teacher
forward / student step), measured here as 0.8 x live / plain; 3x for a teacher that costs 3x the student),
and the one-off logit extraction, which happens before the first epoch.

    # ResNet-56 -> ResNet-20 (the teacher costs about as much as a student step)
    python benchmarks/distillation.py --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --teacher-weights ../shared/weights/cifar10-resnet/resnet56-4bfd9763.th
    # a bigger teacher for the cost alone: EfficientNet-Lite0 at 128 px with a random 10-class head
    python benchmarks/distillation.py --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --teacher efficientnet_lite0 --random-teacher --teacher-image-size 128
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from timing import timed_fit

from datamodules import CIFAR10DataModule
from lightning_modules import Distillation, TransferModule
from lightning_modules.backbones import backbone_preprocessing

WAYS = ("plain", "live", "cached")


def teacher_arguments(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if args.teacher_ckpt:
        return {"teacher_ckpt": args.teacher_ckpt}
    if args.random_teacher:  # what a teacher costs does not depend on its weights
        module = TransferModule(backbone=args.teacher, pretrained=False, num_classes=10)
        path = folder / "random-teacher.ckpt"
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
        return {"teacher_ckpt": str(path)}
    return {"teacher": args.teacher, "teacher_weights": args.teacher_weights}


def fit_time(way: str, datamodule: CIFAR10DataModule, teacher: dict[str, Any], args: argparse.Namespace, folder: Path):
    """(seconds of the last training epoch, seconds before the first one: setup and logit extraction)."""
    model = Distillation(
        backbone=args.student,
        pretrained=False,
        num_classes=10,
        alpha=0.0 if way == "plain" else 0.9,
        teacher_cache=way == "cached",
        teacher_cache_dir=str(folder / "logits"),
        teacher_image_size=args.teacher_image_size,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        **teacher,
    )
    seconds, total = timed_fit(model, datamodule, max_epochs=args.epochs)
    return seconds[-1], total - sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--student", default="cifar_resnet20")
    parser.add_argument("--teacher", default="cifar_resnet56")
    parser.add_argument("--teacher-weights", help="weights file of --teacher (else $TRANSFER_WEIGHTS_DIR)")
    parser.add_argument("--teacher-ckpt", help="a run's checkpoint as the teacher, instead of --teacher")
    parser.add_argument("--random-teacher", action="store_true", help="--teacher with random weights and head")
    parser.add_argument("--teacher-image-size", type=int)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="per fit; the last one is timed")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        teacher = teacher_arguments(args, folder)
        datamodule = CIFAR10DataModule(  # one instance: the image folder is scanned once
            root=args.data_root,
            train_per_class=args.per_class,
            augment=False,
            num_workers=args.workers,
            batch_size=args.batch_size,
            preprocessing=backbone_preprocessing(args.student),
        )
        epochs: dict[str, list[float]] = {way: [] for way in WAYS}
        setup: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                epoch, before = fit_time(way, datamodule, teacher, args, folder)
                epochs[way].append(epoch)
                setup[way].append(before)
        rows = len(datamodule.datasets["train"])

    median = {way: statistics.median(seconds) for way, seconds in epochs.items()}
    cached_vs_plain = [c / p for c, p in zip(epochs["cached"], epochs["plain"], strict=True)]
    live_vs_cached = [lv / c for lv, c in zip(epochs["live"], epochs["cached"], strict=True)]
    live_vs_plain = median["live"] / median["plain"]
    teacher_name = args.teacher_ckpt or args.teacher + (" (random weights)" if args.random_teacher else "")
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"student {args.student}, teacher {teacher_name}"
        + (f" at {args.teacher_image_size} px" if args.teacher_image_size else "")
        + f"; CIFAR-10 {rows} training images, batch {args.batch_size}, {args.rounds} interleaved rounds\n"
    )
    print("| way | train epoch (median) | img/s | before the first epoch (median) |\n|---|---|---|---|")
    for way, label in zip(WAYS, ("cross-entropy only", "KD, live teacher", "KD, cached logits"), strict=True):
        extra = " (incl. extraction on the first round)" if way == "cached" else ""
        before = statistics.median(setup[way])
        print(f"| {label} | {median[way]:.2f} s | {rows / median[way]:.0f} | {before:.1f} s{extra} |")
    print(f"\nteacher forward / student step: {live_vs_plain - 1:.2f} (from live / plain = {live_vs_plain:.2f})")
    print(
        f"cached / plain: median {statistics.median(cached_vs_plain):.2f}, max {max(cached_vs_plain):.2f} "
        "(target <= 1.1)"
    )
    print(
        f"live / cached: median {statistics.median(live_vs_cached):.2f}x, min {min(live_vs_cached):.2f}x "
        f"(target >= {0.8 * live_vs_plain:.2f}x = 0.8 x live / plain)"
    )
    print(f"first-round extraction: {setup['cached'][0] - statistics.median(setup['plain']):.1f} s")


if __name__ == "__main__":
    main()
