"""Zero-shot transfer: the backbone's own ImageNet classifier, restricted to the target's classes."""

from __future__ import annotations

from typing import Any

from lightning_modules.base import ParamGroup, TransferModule
from lightning_modules.imagenet_head import check_imagenet_rows, copy_imagenet_rows, imagenet_indices_of


class ZeroShot(TransferModule):
    """Logits are the pretrained 1000-way classifier's logits at the target's ImageNet indices (read from
    the datamodule's `imagenet_indices` at setup); nothing is trained.

    Run it with `transfer test` or `transfer validate`, e.g. on an ImageNet subset.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        check_imagenet_rows(self, "model ZeroShot")
        self.backbone.requires_grad_(False)
        self.head.requires_grad_(False)

    def check_data(self, datamodule: Any) -> None:
        imagenet_indices_of(datamodule, "model ZeroShot")

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise ValueError("ZeroShot trains nothing: run `transfer test` or `transfer validate` with it")
        copy_imagenet_rows(self, "model ZeroShot")

    def param_groups(self) -> list[ParamGroup]:
        return []
