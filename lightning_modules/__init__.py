"""Transfer strategies (LightningModules) and the backbone registry."""

from lightning_modules.backbones import Backbone, backbone_preprocessing, create_backbone, register_backbone
from lightning_modules.base import TransferModule
from lightning_modules.contrastive import Contrastive
from lightning_modules.distillation import Distillation
from lightning_modules.feature_extraction import FeatureExtraction
from lightning_modules.fine_tuning import FineTuning
from lightning_modules.multi_task import MultiTask
from lightning_modules.zero_shot import ZeroShot

__all__ = [
    "Backbone",
    "Contrastive",
    "Distillation",
    "FeatureExtraction",
    "FineTuning",
    "MultiTask",
    "TransferModule",
    "backbone_preprocessing",
    "create_backbone",
    "register_backbone",
    "ZeroShot",
]
