"""`transfer export`: the checkpoint of any strategy -> a self-describing folder a model can be used from.

    transfer export --ckpt_path runs/cifar10/checkpoints/last.ckpt --out exports/cifar10
    transfer export --ckpt_path last.ckpt --out exports/rte --format safetensors onnx torchscript

The folder (`inference.folder`) holds the network (backbone and heads; an adapter merged into the weights, a
distillation's student, every head of a multi-task model, by task name) as `model.safetensors`, `config.json`
(backbone, label names, task type, how inputs are made ready), a text model's tokenizer, and a model card
(`README.md`) from the run's records. `--format onnx` adds `model.onnx`, checked against PyTorch with onnxruntime
before the command succeeds; `torchscript` adds `model.torchscript.pt`. Use it with `inference.Predictor` or
`transfer predict --model <folder>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.export.card import model_card
from experiments.export.network import export_config, exported_model
from experiments.export.write import write_export
from experiments.run_model import load_trained_model
from inference.folder import FORMATS


def export_checkpoint(
    ckpt_path: str | Path, out: str | Path, formats: list[str] | None = None, seed: int | None = None
) -> dict[str, Any]:
    """Export `ckpt_path` into the folder `out`; returns its config."""
    formats = formats or ["safetensors"]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"--format {' '.join(unknown)}: not one of {', '.join(FORMATS)}")
    model, checkpoint = load_trained_model(ckpt_path, seed)
    network = exported_model(model)
    config = export_config(network, checkpoint["hyper_parameters"], str(ckpt_path))
    inputs = checkpoint["hyper_parameters"]["inputs"]
    first = next(iter(inputs["tasks"].values())) if inputs["type"] == "multi_task" else inputs
    write_export(
        Path(out),
        network,
        config,
        tokenizer=first.get("tokenizer"),
        card=lambda config, sizes: model_card(config, checkpoint, str(ckpt_path), sizes),
    )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transfer export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt_path", required=True, type=Path, help="a checkpoint written by `transfer fit`")
    parser.add_argument("--out", required=True, type=Path, help="the export folder (replaced if it exists)")
    parser.add_argument(
        "--format",
        nargs="+",
        default=["safetensors"],
        choices=list(FORMATS),
        help="formats to write; safetensors always (the folder's weights)",
    )
    parser.add_argument(
        "--seed", type=int, help="the run's seed_everything; needed only for an adapter on a random base"
    )
    args = parser.parse_args(argv)
    try:
        config = export_checkpoint(args.ckpt_path, args.out, args.format, args.seed)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    tasks = ", ".join(f"{name} ({task['num_classes']} outputs)" for name, task in config["tasks"].items())
    print(f"exported {config['strategy']} on {config['backbone']['name']} to {args.out}: {tasks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
