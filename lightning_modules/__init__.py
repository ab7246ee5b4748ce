"""Transfer strategies (LightningModules) and the backbone registry.

The names below are imported on first use (PEP 562), so that `lightning_modules.backbones` and the other
plain-PyTorch modules load without Lightning (the exported-model predictor, `inference`, needs only them).
"""

from __future__ import annotations

from datamodules.lazy import lazy_names

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


__getattr__, __dir__, import_all = lazy_names(__name__, _WHERE)
