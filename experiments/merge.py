"""`transfer merge CHECKPOINT`: an adapter run's checkpoint -> a plain checkpoint, the adapter folded in.

The merged checkpoint holds the whole model (backbone with the adapter merged into its weights, head, ...)
and computes the same outputs; `transfer test --ckpt_path`, `model.backbone_ckpt` and `model.weights` load
it like the checkpoint of any other run. `--peft DIR` also writes the unmerged adapter in peft's own format,
for `peft.PeftModel.from_pretrained(<the plain timm / transformers model>, DIR)`.

    transfer merge runs/.../checkpoints/last.ckpt                 # -> runs/.../checkpoints/last.merged.ckpt
    transfer merge last.ckpt --output merged.ckpt --peft adapter/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from callbacks import AtomicCheckpointIO
from experiments.run_model import load_trained_model
from lightning_modules.adapters import merge_adapter, save_peft_adapter
from lightning_modules.base import TransferModule
from lightning_modules.frozen_base import FROZEN_BASE


def load_adapter_run(path: str | Path, seed: int | None = None) -> tuple[TransferModule, dict[str, Any]]:
    """The model of an adapter run's checkpoint (frozen base checked) and the checkpoint. `seed`: the run's
    `seed_everything`, which rebuilds a randomly initialised base."""
    model, checkpoint = load_trained_model(path, seed)
    if FROZEN_BASE not in checkpoint:
        raise ValueError(f"checkpoint {path} is not an adapter run's checkpoint (it has no {FROZEN_BASE} record)")
    return model, checkpoint


def merge_checkpoint(
    path: str | Path, output: str | Path | None = None, peft_dir: str | Path | None = None, seed: int | None = None
) -> Path:
    model, checkpoint = load_adapter_run(path, seed)
    if peft_dir is not None:
        save_peft_adapter(model.backbone, peft_dir)
    merge_adapter(model.backbone)
    target = Path(output) if output is not None else Path(path).with_suffix(".merged.ckpt")
    merged = {
        "state_dict": model.state_dict(),
        "hyper_parameters": {**checkpoint["hyper_parameters"], "adapter": None},
        "pytorch-lightning_version": checkpoint["pytorch-lightning_version"],
        "merged_from": {"checkpoint": str(path), FROZEN_BASE: checkpoint[FROZEN_BASE]},
    }
    AtomicCheckpointIO().save_checkpoint(merged, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="transfer merge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of a run with model.adapter")
    parser.add_argument("--output", "-o", type=Path, help="the merged checkpoint (default: <checkpoint>.merged.ckpt)")
    parser.add_argument("--peft", type=Path, help="also write the unmerged adapter in peft's format into this folder")
    parser.add_argument(
        "--seed",
        type=int,
        help="the run's seed_everything; needed only for a randomly initialised base (pretrained: false)",
    )
    args = parser.parse_args(argv)
    try:
        target = merge_checkpoint(args.checkpoint, args.output, args.peft, args.seed)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"merged checkpoint written to {target}" + (f"; peft adapter in {args.peft}" if args.peft else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
