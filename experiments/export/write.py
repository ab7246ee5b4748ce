"""Writing an export folder whole: every file into a temporary folder beside the target, then one rename."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference.folder import BACKBONE_CONFIG, CARD, CONFIG, TOKENIZER, WEIGHTS
from inference.model import ExportedModel
from lightning_modules.backbones.transformers_encoders import TransformersBackbone


def write_export(
    out: Path,
    network: ExportedModel,
    config: dict[str, Any],
    tokenizer: str | None,
    extra: Callable[[Path, dict[str, Any]], None] | None = None,
    card: Callable[[dict[str, Any], dict[str, int]], str] | None = None,
) -> None:
    """The weights (safetensors), a text model's tokenizer and encoder config, whatever `extra(folder, config)`
    adds (other formats; it may add to `config`), `config.json` and the card `card(config, file sizes)`. A
    folder already at `out` is replaced only once the new one is complete."""
    from safetensors.torch import save_file

    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        state = {name: tensor.detach().contiguous() for name, tensor in network.state_dict().items()}
        save_file(state, str(partial / WEIGHTS), metadata={"format": config["format"]})
        if isinstance(network.backbone, TransformersBackbone):
            assert tokenizer is not None, "a text model is exported with its tokenizer"
            _write_text_files(partial, network.backbone, tokenizer, config)
        (partial / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if extra is not None:  # e.g. other formats, checked with a Predictor on the folder so far
            extra(partial, config)
            (partial / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if card is not None:
            sizes = {str(p.relative_to(partial)): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
            (partial / CARD).write_text(card(config, sizes))
        umask = os.umask(0)
        os.umask(umask)
        for path in partial.rglob("*"):  # readable by whoever serves the model (some writers make files 0600)
            path.chmod((0o755 if path.is_dir() else 0o644) & ~umask)
        _replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _write_text_files(folder: Path, backbone: TransformersBackbone, tokenizer: str, config: dict[str, Any]) -> None:
    from datamodules.tokenization import load_tokenizer, tokenizer_identity

    load_tokenizer(tokenizer).save_pretrained(str(folder / TOKENIZER))
    backbone.model.config.save_pretrained(str(folder / BACKBONE_CONFIG))
    saved = str(folder / TOKENIZER)
    config["backbone"]["tokenizer_identity"] = tokenizer_identity(load_tokenizer(saved), saved)


def _replace(new: Path, out: Path) -> None:
    """`new` renamed to `out`; an existing `out` is moved aside first and removed after."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
