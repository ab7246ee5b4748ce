"""Distillation epoch cost: plain cross-entropy vs KD with a live teacher vs KD with cached teacher logits.

Benchmark 3. Same student (`Distillation` with alpha 0 for plain training: the same code without the
teacher), same data (un-augmented, which the cache requires), same optimizer. Each round trains one fit
of each way, rounds interleaved; the last epoch of each fit is timed (the first warms up workers and
kernels). Reported: the speed-ups of cached over plain (target: cached costs at most 1.1x plain) and of
cached over live (target: at least 0.8 x (1 + teacher forward / student step), measured here as 0.8 x
live / plain; 3x for a teacher that costs 3x the student), and the one-off logit extraction.

    # ResNet-56 -> ResNet-20 (the teacher costs about as much as a student step)
    python benchmarks/distillation.py --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --teacher-weights ../shared/weights/cifar10-resnet/resnet56-4bfd9763.th
    # a bigger teacher for the cost alone: EfficientNet-Lite0 at 128 px with a random 10-class head
    python benchmarks/distillation.py --data-root ../shared/data/cifar10-jpeg.tar.gz \\
        --teacher efficientnet_lite0 --random-teacher --teacher-image-size 128
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from harness import Comparison, arguments, measure, report
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
    """Seconds of the last training epoch and of everything before the first one (setup, logit extraction)."""
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
    return {"epoch": seconds[-1], "setup": total - sum(seconds)}


def run(args: argparse.Namespace) -> list[Comparison]:
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
        ways = {way: functools.partial(fit_time, way, datamodule, teacher, args, folder) for way in WAYS}
        samples = measure(ways, args.rounds)
        rows = len(datamodule.datasets["train"])  # type: ignore[arg-type]
    live_vs_plain = statistics.median(samples.seconds["live epoch"]) / statistics.median(samples.seconds["plain epoch"])
    setup = samples.seconds
    extraction = max(setup["cached setup"]) - statistics.median(setup["plain setup"])  # the first cached fit extracts
    teacher_name = args.teacher_ckpt or args.teacher + (" (random weights)" if args.random_teacher else "")
    note = (
        f"student {args.student}, teacher {teacher_name}, CIFAR-10 {rows} images, batch {args.batch_size}; "
        f"teacher forward / student step = {live_vs_plain - 1:.2f}; one-off logit extraction {extraction:.1f} s"
    )
    cached = Comparison("KD epoch: cached logits vs cross-entropy only", "plain epoch", "cached epoch", samples)
    live = Comparison("KD epoch: cached logits vs live teacher", "live epoch", "cached epoch", samples)
    floor = 0.8 * live_vs_plain
    return [
        cached.judge("cached costs <= 1.1x plain (speed-up >= 0.91x)", cached.median >= 1 / 1.1, note),
        live.judge(f">= {floor:.2f}x (0.8 x (1 + teacher cost))", live.median >= floor),
    ]


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
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
    parser.add_argument("--rounds", type=int, default=5)
    return parser


def main() -> None:
    args = parser().parse_args()
    report(run(args))


if __name__ == "__main__":
    main()
