"""Benchmark 6. Fine-tuning epoch on SST-2: padding every batch to `max_length` vs to its longest sentence (dynamic).

Same rows, same order (same seed), same model and optimizer; only the padding differs, so the dev
accuracy after the epoch should agree up to float noise while the epoch time does not. Length-grouped
batching (less padding still, a different order) is measured beside them.

    python benchmarks/dynamic_padding.py --glue-root ../shared/data/glue [--train-rows 500 --rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
from harness import Comparison, arguments, measure, report
from lightning import Trainer, seed_everything
from timing import timed_fit

from datamodules import GLUEDataModule
from lightning_modules import FineTuning
from lightning_modules.backbones import backbone_preprocessing
from lightning_modules.schedulers import WarmupLR

WAYS = {
    "padded to max_length": {"pad_to_max_length": True},
    "dynamic padding": {},
    "dynamic + length grouping": {"group_by_length": True},
}


def one_epoch(args: argparse.Namespace, accuracy: dict[str, list[float]], way: str) -> float:
    """Seconds of one training epoch; the dev accuracy after it goes into `accuracy[way]`."""
    seed_everything(args.seed, verbose=False)
    datamodule = GLUEDataModule(
        task="sst2",
        root=args.glue_root,
        train_limit=args.train_rows,
        max_length=args.max_length,
        batch_size=32,
        preprocessing=backbone_preprocessing(args.backbone),
        **WAYS[way],
    )
    model = FineTuning(
        backbone=args.backbone,
        num_classes=2,
        optimizer=partial(torch.optim.AdamW, lr=5e-5, weight_decay=0.01),
        lr_scheduler=partial(WarmupLR, warmup=0.1, decay="linear"),  # the GLUE recipe
    )
    (epoch,), _ = timed_fit(model, datamodule, max_epochs=1)
    evaluator = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = evaluator.validate(model, datamodule=datamodule, verbose=False)
    accuracy.setdefault(way, []).append(metrics["val/acc"])
    return epoch


def run(args: argparse.Namespace) -> list[Comparison]:
    accuracy: dict[str, list[float]] = {}
    samples = measure({way: partial(one_epoch, args, accuracy, way) for way in WAYS}, args.rounds)
    dev = {way: 100 * statistics.median(values) for way, values in accuracy.items()}
    same = abs(dev["dynamic padding"] - dev["padded to max_length"]) <= 0.5
    note = (
        f"{args.backbone}, SST-2 {args.train_rows} train rows, one epoch, max_length {args.max_length}; dev accuracy "
        + ", ".join(f"{way} {value:.2f} %" for way, value in dev.items())
    )
    dynamic = Comparison("SST-2 epoch: dynamic padding", "padded to max_length", "dynamic padding", samples)
    grouped = Comparison(
        "SST-2 epoch: dynamic + length grouping", "padded to max_length", "dynamic + length grouping", samples
    )
    return [
        dynamic.judge(">= 2x, same dev accuracy (0.5 pt)", dynamic.median >= 2 and same, note),
        grouped.judge("reported", None),
    ]


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--glue-root", required=True)
    parser.add_argument("--backbone", default="minilm_l6")
    parser.add_argument("--train-rows", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    return parser


def main() -> None:
    args = parser().parse_args()
    report(run(args))


if __name__ == "__main__":
    main()
