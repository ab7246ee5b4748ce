"""Fine-tuning epoch on SST-2: padding every batch to `max_length` vs to its longest sentence (dynamic).

Same rows, same order (same seed), same model and optimizer; only the padding differs, so the dev
accuracy after the epoch should agree up to float noise while the epoch time does not. Length-grouped
batching (less padding still, a different order) is measured beside them.

    python benchmarks/dynamic_padding.py --glue-root ../shared/data/glue --train-rows 2000
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import torch
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


def one_epoch(args: argparse.Namespace, **padding: bool) -> tuple[float, float, float]:
    """(train epoch seconds, dev-evaluation seconds, dev accuracy) after one epoch."""
    seed_everything(args.seed, verbose=False)
    datamodule = GLUEDataModule(
        task="sst2",
        root=args.glue_root,
        train_limit=args.train_rows,
        max_length=args.max_length,
        batch_size=32,
        preprocessing=backbone_preprocessing(args.backbone),
        **padding,
    )

    model = FineTuning(
        backbone=args.backbone,
        num_classes=2,
        optimizer=partial(torch.optim.AdamW, lr=5e-5, weight_decay=0.01),
        lr_scheduler=partial(WarmupLR, warmup=0.1, decay="linear"),  # the GLUE recipe
    )
    (epoch,), _ = timed_fit(model, datamodule, max_epochs=1)
    started = time.perf_counter()
    evaluator = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = evaluator.validate(model, datamodule=datamodule, verbose=False)
    return epoch, time.perf_counter() - started, metrics["val/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-root", required=True)
    parser.add_argument("--backbone", default="minilm_l6")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    results = {way: one_epoch(args, **padding) for way, padding in WAYS.items()}
    padded_epoch = results["padded to max_length"][0]
    print(
        f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{args.backbone}, SST-2 {args.train_rows} train rows, one epoch, max_length {args.max_length}\n")
    print("| way | train epoch | dev evaluation | dev accuracy | epoch speedup |\n|---|---|---|---|---|")
    for way, (epoch, evaluation, accuracy) in results.items():
        print(f"| {way} | {epoch:.1f} s | {evaluation:.1f} s | {100 * accuracy:.2f} % | {padded_epoch / epoch:.1f}x |")


if __name__ == "__main__":
    main()
