"""Backbones: a name -> a pretrained feature extractor with one contract (`Backbone`).

Every backbone is an `nn.Module` with `num_features`, `forward(inputs) -> [B, num_features]` (pooled
features; images, or for text the tokenized batch dict), `layer_groups()` (parameter groups from input to
output, for freezing and layer-wise learning rates), `preprocessing` (what its inputs must look like) and
`pretrained_head()` (the classifier it was trained with, if any).

Names are looked up among the registered backbones (`register_backbone`: this package's modules and
third-party packages' entry points, `registry`), then in timm, then in torchvision; `timm:<name>` /
`torchvision:<name>` pick a library explicitly and `hf:<name or path>` loads any transformers encoder
(`transformers_encoders`). `backbone_kwargs` pass options to the builder (timm's `drop_path_rate`, a
transformers encoder's `pooling` or `attn_implementation`, ...).
"""

from lightning_modules.backbones.base import Backbone, BadBackboneOption, StateDict, default_adapter_targets
from lightning_modules.backbones.registry import (
    ENTRY_POINT_GROUP,
    backbone_preprocessing,
    create_backbone,
    register_backbone,
    registered_backbones,
)
from lightning_modules.backbones.weights import (
    PretrainedWeightsUnavailable,
    load_weights,
    offline,
    read_state_dict,
    weights_dir,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backbone",
    "BadBackboneOption",
    "PretrainedWeightsUnavailable",
    "StateDict",
    "backbone_preprocessing",
    "create_backbone",
    "default_adapter_targets",
    "load_weights",
    "offline",
    "read_state_dict",
    "register_backbone",
    "registered_backbones",
    "weights_dir",
]
