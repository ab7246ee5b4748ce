"""The contract every backbone fulfils: pooled features, layer groups, preprocessing, the source classifier."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from datamodules.transforms import Preprocessing

StateDict = dict[str, Tensor]


def backbone_inputs(batch: dict[str, Any]) -> Any:
    """What a backbone takes from a batch: its images (`pixel_values`), or a text batch whole (the tokenized dict,
    from which a text backbone picks the inputs its model takes)."""
    return batch.get("pixel_values", batch)


class Backbone(nn.Module):
    """The contract every backbone fulfils (see `lightning_modules.backbones`)."""

    num_features: int
    preprocessing: Preprocessing

    def layer_groups(self) -> list[list[nn.Parameter]]:
        raise NotImplementedError

    def pretrained_head(self) -> nn.Linear | None:
        return None

    def convert_state_dict(self, state_dict: StateDict) -> StateDict:
        """Map a foreign naming (e.g. the original repository's) onto this module's keys."""
        return state_dict

    def adapter_host(self) -> nn.Module:
        """The module adapters are injected into: the library model a wrapper holds (so that adapters saved in
        peft's format load onto the plain timm / torchvision / transformers model), else the backbone itself."""
        model = self._modules.get("model")
        return model if model is not None else self

    def adapter_targets(self) -> list[str] | None:
        """Default `target_modules` of adapters (see `default_adapter_targets`); None lets peft choose."""
        return default_adapter_targets(self.adapter_host(), self.pretrained_head())


def default_adapter_targets(host: nn.Module, head: nn.Module | None) -> list[str]:
    """Default adapter targets of a vision model: its fused `qkv` projections if it has them (ViTs); in a model
    with depthwise convolutions (EfficientNet, MobileNet) its pointwise convolutions and linear layers (LoRA
    does not support grouped convolutions); otherwise every ungrouped convolution and linear layer. Never the
    pretrained classifier."""
    head_modules = set(head.modules()) if head is not None else set()
    layers = {n: m for n, m in host.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and m not in head_modules}
    qkv = [n for n in layers if n.rsplit(".", 1)[-1] == "qkv"]
    if qkv:
        return qkv
    convs = {n: m for n, m in layers.items() if isinstance(m, nn.Conv2d)}
    depthwise = any(m.groups > 1 for m in convs.values())
    return [
        name
        for name, layer in layers.items()
        if not isinstance(layer, nn.Conv2d) or (layer.groups == 1 and (not depthwise or layer.kernel_size == (1, 1)))
    ]


class BadBackboneOption(ValueError):
    """`model.backbone_kwargs` holds an option the backbone does not take."""

    def __init__(self, name: str, options: dict, reason: str):
        super().__init__(f"model.backbone_kwargs {sorted(options)}: backbone {name!r} does not take them ({reason})")
