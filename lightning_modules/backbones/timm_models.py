"""Any timm model as a backbone: features are its pre-logits, layer groups its own coarse grouping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
from timm.models import group_parameters
from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones.base import Backbone, BadBackboneOption, StateDict
from lightning_modules.backbones.weights import PretrainedWeightsUnavailable


def create_timm_model(name: str, pretrained: bool, **kwargs: Any) -> Any:
    """`timm.create_model(name, pretrained, **kwargs)`, kwargs such as `drop_path_rate` or `img_size`; an option
    the model does not take and weights that cannot be fetched are errors that say so."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as error:  # an option the model's constructor does not take
        raise BadBackboneOption(name, kwargs, str(error)) from error
    except Exception as error:
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailable(name, f"timm could not fetch them ({error})") from error


class TimmBackbone(Backbone):
    """Any timm model; its classifier is kept (frozen) as `pretrained_head()`, features are pre-logits."""

    def __init__(self, model: Any, preprocessing: Preprocessing, rename: Callable | None = None):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.preprocessing = preprocessing
        self._rename = rename
        model.get_classifier().requires_grad_(False)

    @classmethod
    def create(cls, name: str, pretrained: bool, preprocessing: Preprocessing, **kwargs: Any) -> TimmBackbone:
        return cls(create_timm_model(name, pretrained, **kwargs), preprocessing)

    def forward(self, images: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        classifier = {id(p) for p in self.model.get_classifier().parameters()}
        params = dict(self.model.named_parameters())
        groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        ordered = [[params[n] for n in names] for _, names in sorted(groups.items())]
        return [g for g in ([p for p in group if id(p) not in classifier] for group in ordered) if g]

    def pretrained_head(self) -> nn.Linear | None:
        head = self.model.get_classifier()
        return head if isinstance(head, nn.Linear) else None

    def convert_state_dict(self, state_dict: StateDict) -> StateDict:
        if self._rename is not None:
            state_dict = self._rename(state_dict, self.model)
        return {f"model.{k}": v for k, v in state_dict.items()}
