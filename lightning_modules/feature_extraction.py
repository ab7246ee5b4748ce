"""Feature extraction: a frozen pretrained backbone and a trained linear head (a linear probe)."""

from __future__ import annotations

from typing import Any, Literal

from lightning_modules.base import ParamGroup, TransferModule
from lightning_modules.imagenet_head import check_imagenet_rows, copy_imagenet_rows, imagenet_indices_of


class FeatureExtraction(TransferModule):
    """Backbone frozen (eval mode, no_grad, out of the optimizer); only the head trains.

    Args:
        cache_features: Compute the backbone features of the un-augmented train and val sets once and
            train the head on them (augmentation is then off for training).
        feature_cache_dir: Folder where cached features persist between runs, keyed by backbone weights
            and data fingerprint; true: `features/` in the cache root (`$TRANSFER_CACHE_DIR`, default
            `~/.cache/transfer`); None keeps them in memory for this run only.
        head_init: `imagenet_rows` starts the head from the pretrained ImageNet classifier's rows for the
            data's classes (an ImageNet subset, see `lightning_modules.imagenet_head`); `random` does not.
    """

    def __init__(
        self,
        cache_features: bool = False,
        feature_cache_dir: bool | str | None = None,
        head_init: Literal["random", "imagenet_rows"] = "random",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if self.adapter is not None:
            raise ValueError("model.adapter: FeatureExtraction trains no backbone weights; use FineTuning with it")
        if cache_features and self.pair_head is not None:
            raise ValueError("model.cache_features caches one embedding per row: not with model.pair_head")
        self.backbone.requires_grad_(False)
        self.cache_features = cache_features
        self.feature_cache_dir = feature_cache_dir
        if head_init == "imagenet_rows":
            check_imagenet_rows(self, "model.head_init=imagenet_rows")
        self.head_init = head_init

    def setup(self, stage: str) -> None:
        if self.cache_features and stage == "fit":
            datamodule: Any = getattr(self.trainer, "datamodule", None)
            if not hasattr(datamodule, "set_input_encoder"):
                raise ValueError(
                    "model.cache_features needs a datamodule with set_input_encoder (TransferDataModule, "
                    f"TextDataModule); got {type(datamodule).__name__}"
                )
            encoder = self.feature_encoder(datamodule, self.feature_cache_dir)
            datamodule.set_input_encoder(encoder)

    def check_data(self, datamodule: Any) -> None:
        if self.head_init == "imagenet_rows":
            imagenet_indices_of(datamodule, "model.head_init=imagenet_rows")

    def on_fit_start(self) -> None:
        if self.head_init == "imagenet_rows" and self.trainer.ckpt_path is None:  # a resumed head is kept
            copy_imagenet_rows(self, "model.head_init=imagenet_rows")

    def param_groups(self) -> list[ParamGroup]:
        return [{"name": "head", "params": list(self.head.parameters())}]
