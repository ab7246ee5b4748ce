"""Candidates of a selection: a backbone (+ weights), optionally cut inside, and how it is built.

A candidate is a backbone name as `model.backbone` takes it (registered, timm, torchvision, `hf:`), with
  weights:    a local weights file (as `model.weights`),
  pretrained: false for a randomly initialised control,
  cut:        a module inside the backbone (`model.blocks.4`, `stage2`) whose output, average-pooled over
              space (or tokens), is the feature: "layer 4 of X" as a candidate of its own,
  layers:     for a transformers encoder, keep only its first `layers` layers,
  pooling:    for a transformers encoder, `cls`, `mean` or `pooler` instead of its default,
  set:        config keys for this candidate alone (e.g. `data.init_args.image_size: 128`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from experiments.ablation.study import cli_value
from lightning_modules.backbones import Backbone
from lightning_modules.backbones.transformers_encoders import POOLINGS, Pooling, TransformersBackbone

KEYS = ("backbone", "weights", "pretrained", "cut", "layers", "pooling", "set")


@dataclass(frozen=True)
class Candidate:
    name: str
    backbone: str
    weights: str | None = None
    pretrained: bool = True
    cut: str | None = None
    layers: int | None = None
    pooling: Pooling | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def identity(self) -> str:
        """What the features depend on besides the weights (which the feature cache hashes itself)."""
        return "|".join(f"{k}={v}" for k, v in asdict(self).items() if k not in ("name", "weights", "overrides"))

    @property
    def keeps_source_head(self) -> bool:
        """The backbone's pretrained classifier still reads these features (LEEP, NCE apply)."""
        return self.pretrained or self.weights is not None

    def model_args(self) -> list[str]:
        """`transfer fit` arguments that build this candidate's backbone (and the data's preprocessing)."""
        args = ["--model.init_args.backbone", self.backbone, "--model.init_args.pretrained", str(self.pretrained)]
        args += ["--model.init_args.weights", self.weights] if self.weights else []
        return args + [arg for key, value in self.overrides for arg in (f"--{key}", cli_value(value))]


def parse_candidates(value: Any, where: str) -> list[Candidate]:
    """A list of names, or a mapping name -> backbone name or {backbone, weights, pretrained, cut, layers,
    pooling}. Errors name `where` and the candidate."""
    if isinstance(value, list):
        value = {str(name): str(name) for name in value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where}: expected a list of backbone names or a mapping name -> candidate, got {value!r}")
    candidates = []
    for name, spec in value.items():
        spec = {"backbone": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else spec
        if not isinstance(spec, dict) or "backbone" not in spec:
            raise ValueError(f"{where}.{name}: expected a backbone name or a mapping with `backbone`, got {spec!r}")
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise ValueError(f"{where}.{name}: unknown keys {unknown}; a candidate takes {list(KEYS)}")
        layers = spec.get("layers")
        if layers is not None and (not isinstance(layers, int) or isinstance(layers, bool) or layers < 1):
            raise ValueError(f"{where}.{name}.layers: expected a positive number of encoder layers, got {layers!r}")
        if spec.get("pooling") not in (None, *POOLINGS):
            raise ValueError(f"{where}.{name}.pooling: expected one of {', '.join(POOLINGS)}, got {spec['pooling']!r}")
        overrides = spec.pop("set", None) or {}
        if not isinstance(overrides, dict) or not all(isinstance(k, str) and not k.startswith("-") for k in overrides):
            raise ValueError(f"{where}.{name}.set: expected a mapping of config keys to values, got {overrides!r}")
        candidates.append(Candidate(name=str(name), **spec, overrides=tuple(overrides.items())))
    return candidates


class _Stop(Exception):
    """Raised by the cut hook: the rest of the network is not computed."""

    def __init__(self, features: Tensor):
        self.features = features


def pool(output: Any) -> Tensor:
    """A module's output -> [B, D]: feature maps averaged over space, token sequences over tokens."""
    tensor = output[0] if isinstance(output, tuple) else output
    if not isinstance(tensor, Tensor) or tensor.ndim < 2:
        raise ValueError(f"the cut module's output is not a batch of features (got {type(tensor).__name__})")
    return tensor.flatten(2).mean(2) if tensor.ndim == 4 else tensor.mean(1) if tensor.ndim == 3 else tensor


class CutBackbone(nn.Module):
    """`backbone` up to the module `cut` (its pooled output is the feature); the rest is not computed."""

    def __init__(self, backbone: nn.Module, cut: str):
        super().__init__()
        try:
            module = backbone.get_submodule(cut)
        except AttributeError:
            names = [n for n, _ in backbone.named_children()]
            raise ValueError(f"cut {cut!r}: no such module in the backbone (its top-level modules: {names})") from None
        self.backbone = backbone
        module.register_forward_hook(self._stop)

    @staticmethod
    def _stop(module: nn.Module, inputs: Any, output: Any) -> None:
        raise _Stop(pool(output))

    def forward(self, inputs: Any) -> Tensor:
        try:
            self.backbone(inputs)
        except _Stop as stop:
            return stop.features
        raise RuntimeError("the cut module was not called in the backbone's forward pass")


def prepare(backbone: Backbone, candidate: Candidate) -> tuple[nn.Module, nn.Linear | None]:
    """The feature extractor of `candidate` from its built backbone, and the source classifier that reads its
    features (None when cut, shortened, re-pooled, randomly initialised, or when the backbone has none)."""
    head = backbone.pretrained_head()
    changed = candidate.cut is not None or candidate.layers is not None or candidate.pooling is not None
    if candidate.layers is not None or candidate.pooling is not None:
        if not isinstance(backbone, TransformersBackbone):
            raise ValueError(f"candidate {candidate.name}: `layers` and `pooling` apply to transformers encoders only")
        if candidate.layers is not None:
            backbone.keep_layers(list(range(candidate.layers)))
        if candidate.pooling is not None:
            if candidate.pooling == "pooler" and getattr(backbone.model, "pooler", None) is None:
                raise ValueError(f"candidate {candidate.name}: this encoder has no pooler; use pooling cls or mean")
            backbone.pooling = candidate.pooling
    extractor: nn.Module = CutBackbone(backbone, candidate.cut) if candidate.cut else backbone
    return extractor.eval(), None if changed or not candidate.keeps_source_head else head
