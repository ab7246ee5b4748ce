"""Adapters: parameter-efficient fine-tuning of any backbone, through Hugging Face `peft` or BitFit.

`model.adapter` takes a `peft` config (`class_path: peft.LoraConfig`, `init_args: {r: 8, lora_alpha: 16}`;
DoRA is `use_dora: true`; `peft.IA3Config` for (IA)3) or `lightning_modules.adapters.BitFit` (biases only:
`peft` has none). `target_modules` left unset take the backbone's `adapter_targets()`: the modules of its
family (fused `qkv` projections of ViTs, pointwise convolutions of EfficientNets) or, for transformers
encoders, `peft`'s own table per model type (BERT: query and value).

The adapters are injected in place into the backbone's library model (`Backbone.adapter_host()`), so the
backbone keeps its contract (layer groups, features) and what `save_peft_adapter` writes loads with
`peft.PeftModel.from_pretrained` onto the plain timm / transformers model.
"""

from __future__ import annotations

import copy
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

from peft import PeftConfig, PeftModel, get_peft_model

from lightning_modules.backbones import Backbone

# jsonargparse fills every nested dataclass of a LoraConfig with its defaults, which peft then reads as given.
warnings.filterwarnings("ignore", message="`loftq_config` specified but will be ignored")


class BitFit:
    """BitFit (Ben Zaken, Ravfogel & Goldberg, ACL 2022): train only the backbone's bias terms (and the
    head); every weight matrix stays as pretrained. Frozen parts of the backbone (a pretrained classifier,
    an unused pooler) stay frozen."""

    def attach(self, backbone: Backbone) -> None:
        for name, param in backbone.named_parameters():
            param.requires_grad_(param.requires_grad and name.endswith("bias"))


Adapter = PeftConfig | BitFit


def attach_adapter(backbone: Backbone, adapter: Adapter) -> None:
    """Freeze the backbone and add the adapter's trainable parameters to it (in place)."""
    if isinstance(adapter, BitFit):
        adapter.attach(backbone)
        return
    config: Any = copy.copy(adapter)  # the targets filled in below are this backbone's, not the caller's config
    if getattr(config, "target_modules", None) is None and not getattr(config, "target_parameters", None):
        targets = backbone.adapter_targets()
        if targets is not None:
            config.target_modules = targets
            if hasattr(config, "feedforward_modules") and config.feedforward_modules is None:
                config.feedforward_modules = []  # (IA)3: scale the outputs of the targets, not their inputs
    host = backbone.adapter_host()
    try:
        peft_model = get_peft_model(host, config)
    except ValueError as error:
        raise ValueError(f"model.adapter {type(adapter).__name__} on this backbone: {error}") from None
    # The peft wrapper is kept outside the module tree: the backbone's parameter names stay those of its own
    # modules (`model.encoder.layer.0...lora_A.default.weight`), never `base_model.model.`-prefixed.
    object.__setattr__(backbone, "peft_model", peft_model)


def merge_adapter(backbone: Backbone) -> None:
    """Fold the adapter into the backbone's weights (peft's `merge_and_unload`): a plain backbone again,
    computing the same function. BitFit's biases are the backbone's own: nothing to fold."""
    peft_model: PeftModel | None = backbone.__dict__.pop("peft_model", None)
    if peft_model is not None:
        peft_model.merge_and_unload(safe_merge=True)


def save_peft_adapter(backbone: Backbone, folder: str | Path) -> None:
    """The adapter in `peft`'s own format (`adapter_config.json`, `adapter_model.safetensors`), for
    `PeftModel.from_pretrained(<the plain library model>, folder)`."""
    peft_model: PeftModel | None = backbone.__dict__.get("peft_model")
    if peft_model is None:
        raise ValueError("this model has no peft adapter to save (BitFit has no peft format: its biases are weights)")
    peft_model.save_pretrained(str(folder))


def adapter_config(adapter: Adapter) -> dict[str, Any]:
    """An adapter as plain config data (`class_path` + the `init_args` that differ from the defaults), as the
    CLI stores it in a checkpoint's hyper_parameters: loadable with `weights_only=True`."""
    cls = type(adapter)
    init_args = {}
    if isinstance(adapter, PeftConfig):
        defaults = cls()
        for key in adapter.__dataclass_fields__:
            value = getattr(adapter, key)
            if adapter.__dataclass_fields__[key].init and value != getattr(defaults, key):
                init_args[key] = _plain(value)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    return value
