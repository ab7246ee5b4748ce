"""Feature extraction: a frozen pretrained backbone and a trained linear head (a linear probe)."""

from __future__ import annotations

from typing import Any

from lightning_modules.base import ParamGroup, TransferModule
from lightning_modules.feature_cache import FeatureEncoder


class FeatureExtraction(TransferModule):
    """Backbone frozen (eval mode, no_grad, out of the optimizer); only the head trains.

    Args:
        cache_features: Compute the backbone features of the un-augmented train and val sets once and
            train the head on them (augmentation is then off for training).
        feature_cache_dir: Folder where cached features persist between runs, keyed by backbone weights
            and data fingerprint; None keeps them in memory for this run only.
    """

    def __init__(
        self,
        cache_features: bool = False,
        feature_cache_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.backbone.requires_grad_(False)
        self.cache_features = cache_features
        self.feature_cache_dir = feature_cache_dir

    def setup(self, stage: str) -> None:
        if self.cache_features and stage == "fit":
            datamodule: Any = getattr(self.trainer, "datamodule", None)
            if not hasattr(datamodule, "set_input_encoder"):
                raise ValueError(
                    "model.cache_features needs a datamodule with set_input_encoder (TransferDataModule, "
                    f"TextDataModule); got {type(datamodule).__name__}"
                )
            encoder = FeatureEncoder(self.backbone, self.backbone_name, datamodule.fingerprint, self.feature_cache_dir)
            datamodule.set_input_encoder(encoder)

    def param_groups(self) -> list[ParamGroup]:
        return [{"name": "head", "params": list(self.head.parameters())}]
