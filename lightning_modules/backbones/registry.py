"""Backbone names -> builders. Registered names first, then timm, then torchvision; `hf:<name or path>` is any
transformers encoder.

Registration is one way: a module registers its backbones with `@register_backbone` when it is imported, and
the registry imports, on its first lookup, every module of this package and every module that an installed
distribution names under the entry-point group `transfer.backbones`, so neither a new file here nor a
third-party package needs a line anywhere else:

    # the third-party package's pyproject.toml
    [project.entry-points."transfer.backbones"]
    my_backbones = "my_package.backbones"
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import Any

import timm
import torchvision

from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lightning_modules.backbones.base import Backbone, BadBackboneOption

ENTRY_POINT_GROUP = "transfer.backbones"


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[..., Backbone]  # (pretrained, **backbone_kwargs) -> backbone
    preprocessing: Preprocessing


_REGISTRY: dict[str, BackboneSpec] = {}
_discovered = False


def register_backbone(name: str, preprocessing: Preprocessing) -> Callable:
    """Register `build(pretrained: bool, **options) -> Backbone` under `name`; `options` are the run's
    `model.backbone_kwargs` (a builder without them refuses any)."""

    def decorator(build: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = BackboneSpec(build, preprocessing)
        return build

    return decorator


def discover_backbones() -> None:
    """Import the modules that register backbones (this package's and the entry points'), once per process. A
    plugin that fails to import is a warning naming it: the other backbones stay usable."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("lightning_modules.backbones")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:
            warnings.warn(
                f"backbone plugin {entry_point.name} = {entry_point.value!r} (entry point group {ENTRY_POINT_GROUP}) "
                f"failed to import: {error!r}",
                stacklevel=2,
            )


def registered_backbones() -> list[str]:
    discover_backbones()
    return sorted(_REGISTRY)


def _registered(name: str) -> BackboneSpec | None:
    discover_backbones()
    return _REGISTRY.get(name)


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


def backbone_preprocessing(name: str, backbone_kwargs: dict[str, Any] | None = None) -> Preprocessing:
    """The preprocessing a backbone expects, from its name (and a timm model's `img_size` option) alone: reads
    no files, builds nothing."""
    spec = _registered(name)
    if spec is not None:
        return spec.preprocessing
    library, model = _library_for(name)
    if library == "hf":
        return Preprocessing(tokenizer=model)
    preprocessing = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    if library == "timm":
        cfg = timm.get_pretrained_cfg(model)
        if cfg is not None:
            mean, std = cfg.mean, cfg.std
            preprocessing = Preprocessing(
                cfg.input_size[-1], (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), cfg.interpolation
            )
        size = (backbone_kwargs or {}).get("img_size")
        if size is not None:  # a ViT built for another resolution
            preprocessing = replace(preprocessing, image_size=size if isinstance(size, int) else size[-1])
    return preprocessing


def create_backbone(
    name: str, pretrained: bool = True, weights: str | None = None, backbone_kwargs: dict[str, Any] | None = None
) -> Backbone:
    """Build backbone `name`; `backbone_kwargs` go to its builder (timm's `create_model`, torchvision's
    `get_model`, a transformers encoder's config and `pooling`). An explicit `weights` file wins over
    `pretrained`."""
    from lightning_modules.backbones.weights import load_weights

    options = dict(backbone_kwargs or {})
    use_pretrained = pretrained and weights is None
    spec = _registered(name)
    if spec is not None:
        try:
            inspect.signature(spec.build).bind(use_pretrained, **options)
        except TypeError as error:
            raise BadBackboneOption(name, options, f"its builder {error}") from None
        backbone = spec.build(use_pretrained, **options)
    else:
        library, model = _library_for(name)
        if library == "hf":
            from lightning_modules.backbones.transformers_encoders import load_encoder

            backbone = load_encoder(model, use_pretrained, **options)
        elif library == "timm":
            from lightning_modules.backbones.timm_models import TimmBackbone

            backbone = TimmBackbone.create(model, use_pretrained, backbone_preprocessing(name, options), **options)
        else:
            from lightning_modules.backbones.torchvision_models import TorchvisionBackbone

            backbone = TorchvisionBackbone.create(model, use_pretrained, backbone_preprocessing(name), **options)
    if weights is not None:
        load_weights(backbone, weights)
    return backbone
