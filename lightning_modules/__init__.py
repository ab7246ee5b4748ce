"""Transfer strategies (LightningModules) and the backbone registry.

The names below are imported on first use (PEP 562), so that `lightning_modules.backbones` and the other
plain-PyTorch modules load without Lightning (the exported-model predictor, `inference`, needs only them).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Backbone": "backbones",
    "backbone_preprocessing": "backbones",
    "create_backbone": "backbones",
    "register_backbone": "backbones",
    "TransferModule": "base",
    "Contrastive": "contrastive",
    "Distillation": "distillation",
    "FeatureExtraction": "feature_extraction",
    "FineTuning": "fine_tuning",
    "MultiTask": "multi_task",
    "ZeroShot": "zero_shot",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


def import_all() -> None:
    """Import every name above (e.g. so that class paths of checkpoints and configs find all subclasses)."""
    for name in _WHERE:
        __getattr__(name)
