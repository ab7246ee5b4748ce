"""Any torchvision classification model as a backbone: its last linear layer is the source classifier."""

from __future__ import annotations

from typing import Any

import torchvision
from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones.base import Backbone, BadBackboneOption, StateDict
from lightning_modules.backbones.weights import PretrainedWeightsUnavailable


class TorchvisionBackbone(Backbone):
    """Any torchvision classification model: its last `nn.Linear` becomes the pretrained head and is
    replaced by the identity, so `forward` returns the features that fed it."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        parent_name, _, attr = _last_linear(model).rpartition(".")
        parent = model.get_submodule(parent_name)
        head = getattr(parent, attr) if attr else None
        if not isinstance(head, nn.Linear):
            raise ValueError("torchvision model has no final nn.Linear classifier to replace")
        setattr(parent, attr, nn.Identity())
        self.model = model
        self.classifier = head.requires_grad_(False)
        self.num_features = head.in_features
        self.preprocessing = preprocessing

    @classmethod
    def create(cls, name: str, pretrained: bool, preprocessing: Preprocessing, **kwargs: Any) -> TorchvisionBackbone:
        """`torchvision.models.get_model(name, weights=..., **kwargs)`: kwargs such as `dropout`."""
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
        except TypeError as error:
            raise BadBackboneOption(name, kwargs, str(error)) from error
        except Exception as error:
            if not pretrained:
                raise
            raise PretrainedWeightsUnavailable(name, f"torchvision could not fetch them ({error})") from error
        return cls(model, preprocessing)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        groups = []
        for name, child in self.model.named_children():
            # The big trunk of mobile/efficient/VGG models is one Sequential: split it into its stages.
            parts = child.children() if name == "features" else [child]
            groups += [list(p.parameters()) for p in parts]
        return [g for g in groups if g]

    def pretrained_head(self) -> nn.Linear | None:
        return self.classifier

    def convert_state_dict(self, state_dict: StateDict) -> StateDict:
        head = _last_linear_from_keys(state_dict)
        return {
            (f"classifier.{k[len(head) + 1 :]}" if head and k.startswith(head + ".") else f"model.{k}"): v
            for k, v in state_dict.items()
        }


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("model has no nn.Linear classifier")
    return names[-1]


def _last_linear_from_keys(state_dict: StateDict) -> str | None:
    weights = [k.removesuffix(".weight") for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 2]
    return weights[-1] if weights else None
