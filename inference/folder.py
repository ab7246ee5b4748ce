"""The export folder, the contract between `transfer export` and everything that uses a model afterwards.

    model.safetensors   the weights of `inference.model.ExportedModel` (backbone + one linear head per task)
    config.json         format, backbone, pair head, and per task: classes (1: regression), label names, label
                        range, and how inputs are made ready (image size, mean / std, interpolation; or
                        tokenizer, `max_length`, text columns, bi-encoder)
    README.md           the model card
    tokenizer/          text models: the tokenizer's files, `backbone/`: the transformers config of the encoder
    model.onnx, model.torchscript.pt    when exported in those formats

Reading checks the folder before building anything: every error names the folder and the missing file or bad value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from inference.model import ExportedModel
from lightning_modules.pair_heads import pair_width

FORMAT = "transfer-export"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
TOKENIZER = "tokenizer"
BACKBONE_CONFIG = "backbone"
ONNX = "model.onnx"
TORCHSCRIPT = "model.torchscript.pt"
FORMATS = {"safetensors": WEIGHTS, "onnx": ONNX, "torchscript": TORCHSCRIPT}


class ExportFolderError(ValueError):
    """An export folder that cannot be used: missing, incomplete or of another format."""

    def __init__(self, folder: str | Path, reason: str):
        super().__init__(f"export folder {folder}: {reason}")


def is_text(config: dict[str, Any]) -> bool:
    return config["backbone"].get("pooling") is not None


def read_config(folder: str | Path) -> dict[str, Any]:
    """`config.json` of an export folder, after checking that the folder holds every file the config needs."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ExportFolderError(folder, "not found (give the folder `transfer export --out` wrote)")
    path = folder / CONFIG
    if not path.is_file():
        raise ExportFolderError(folder, f"has no {CONFIG}: it was not written by `transfer export`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportFolderError(folder, f"{CONFIG} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportFolderError(folder, f"{CONFIG} is not a {FORMAT} config (its format: {config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportFolderError(
            folder, f"format version {config.get('format_version')!r}; this version of transfer reads {FORMAT_VERSION}"
        )
    needed = [WEIGHTS] + ([TOKENIZER, f"{BACKBONE_CONFIG}/config.json"] if is_text(config) else [])
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise ExportFolderError(folder, f"is missing {', '.join(missing)} (copy the whole folder)")
    return config


def build_model(folder: str | Path, config: dict[str, Any]) -> ExportedModel:
    """The network `config` describes, its weights loaded from the folder's `model.safetensors`."""
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    backbone = _build_backbone(folder, config["backbone"])
    width = pair_width(config["backbone"]["num_features"], config["pair_head"])
    heads = {name: nn.Linear(width, task["num_classes"]) for name, task in config["tasks"].items()}
    model = ExportedModel(backbone, heads, config["pair_head"])
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except RuntimeError as error:
        raise ExportFolderError(folder, f"{WEIGHTS} does not match {CONFIG}: {str(error)[:500]}") from None
    return model.eval()


def _build_backbone(folder: Path, spec: dict[str, Any]) -> nn.Module:
    if spec.get("pooling") is None:
        from lightning_modules.backbones import create_backbone

        return create_backbone(spec["name"], pretrained=False, backbone_kwargs=spec.get("kwargs"))
    import torch
    from transformers import AutoConfig, AutoModel

    from datamodules.transforms import Preprocessing
    from lightning_modules.backbones.transformers_encoders import TransformersBackbone

    encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder / BACKBONE_CONFIG)), dtype=torch.float32)
    return TransformersBackbone(encoder, Preprocessing(tokenizer=str(folder / TOKENIZER)), spec["pooling"])
