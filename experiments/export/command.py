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

import torch

from experiments.export.card import model_card
from experiments.export.formats import export_onnx, export_torchscript
from experiments.export.network import export_config, exported_model, task_inputs
from experiments.export.write import write_export
from experiments.run_model import STRATEGY_HELP, load_trained_model
from inference import Predictor
from inference.folder import FORMATS
from inference.inputs import image_files, read_texts
from inference.preprocess import TextPreparer


def export_checkpoint(
    ckpt_path: str | Path,
    out: str | Path,
    formats: list[str] | None = None,
    seed: int | None = None,
    check_inputs: str | Path | None = None,
    tolerance: float = 1e-4,
    opset: int | None = None,
    own_strategy: str | None = None,
) -> dict[str, Any]:
    """Export `ckpt_path` (trained with `own_strategy`, when it is the user's own) into the folder `out`; returns
    its config."""
    formats = formats or ["safetensors"]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"--format {' '.join(unknown)}: not one of {', '.join(FORMATS)}")
    model, checkpoint = load_trained_model(ckpt_path, seed, own_strategy)
    network = exported_model(model)
    config = export_config(network, checkpoint["hyper_parameters"], str(ckpt_path))
    first = next(iter(task_inputs(checkpoint["hyper_parameters"]["inputs"]).values()))

    def other_formats(folder: Path, config: dict[str, Any]) -> None:
        if "onnx" not in formats and "torchscript" not in formats:
            return
        batches, source = check_batches(Predictor.load(folder), check_inputs)
        if "onnx" in formats:
            config["onnx"] = {**export_onnx(network, batches, folder, tolerance, opset), "check_inputs": source}
        if "torchscript" in formats:
            config["torchscript"] = {**export_torchscript(network, batches, folder, tolerance), "check_inputs": source}

    write_export(
        Path(out),
        network,
        config,
        tokenizer=first.get("tokenizer"),
        extra=other_formats,
        card=lambda config, sizes: model_card(config, checkpoint, str(ckpt_path), sizes),
    )
    return config


# Checks of text models without --check-inputs: real sentences (pairs: consecutive ones), of varied lengths.
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Someone plays music.",
    "The company reported a sharp fall in quarterly profits, blaming higher energy costs and weaker demand.",
    "Profits dropped.",
    "It rained all day.",
    "The streets stayed dry because the rain never came, despite the forecast of heavy storms for the whole region.",
    "She didn't know whether the train would arrive on time.",
    "The train was late.",
]


def check_batches(predictor: Predictor, source: str | Path | None, count: int = 16) -> tuple[list[dict], str]:
    """Batches of prepared inputs to compare the formats on: `count` inputs from `source` (a folder of images,
    a .csv / .tsv of texts), else real sentences (text) or seeded random images; all of them, then the first
    alone (a second batch size and, for text, another sequence length). And what the inputs were."""
    preparer: Any = predictor.preparer(predictor.tasks[0])
    text = isinstance(preparer, TextPreparer)
    items: list[Any]
    if source is not None and not text:
        items = image_files(source)[:count]
        described = f"{len(items)} images of {source}"
    elif source is not None:
        rows, _ = read_texts(source, preparer.columns)
        items = [row for row in rows if row is not None][:count]
        described = f"{len(items)} rows of {source}"
    elif text:
        columns = len(preparer.columns)
        items = SENTENCES if columns == 1 else list(zip(SENTENCES[::2], SENTENCES[1::2], strict=True))
        described = "built-in English sentences"
    else:
        generator = torch.Generator().manual_seed(0)
        items = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=generator) for _ in range(8)]
        described = "8 seeded random images (give --check_inputs <a folder of images> to check on real ones)"
    if not items:
        raise ValueError(f"--check_inputs {source}: no inputs found there")
    prepared = [preparer.one(item) for item in items]
    return [preparer.batch(prepared), preparer.batch(prepared[:1])], described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="transfer export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--check_inputs",
        help="inputs to check ONNX / TorchScript on: a folder of images or a .csv / .tsv of texts (its first 16); "
        "default: built-in sentences for text, seeded random images",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest absolute difference of ONNX / TorchScript outputs from PyTorch's allowed (default 1e-4)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument(
        "--seed", type=int, help="the run's seed_everything, for an adapter on a random base (default: the recorded)"
    )
    parser.add_argument("--strategy", help=STRATEGY_HELP)
    args = parser.parse_args(argv)
    try:
        config = export_checkpoint(
            args.ckpt_path,
            args.out,
            args.format,
            args.seed,
            args.check_inputs,
            args.tolerance,
            args.opset,
            args.strategy,
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    tasks = ", ".join(f"{name} ({task['num_classes']} outputs)" for name, task in config["tasks"].items())
    print(f"exported {config['strategy']} on {config['backbone']['name']} to {args.out}: {tasks}")
    for name in ("onnx", "torchscript"):
        if name in config:
            checked = config[name]
            print(
                f"  {checked['file']}: outputs within {checked['max_abs_diff']:.2e} of PyTorch's on "
                f"{checked['check_inputs']} (tolerance {checked['tolerance']:g})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
