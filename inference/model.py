"""The exported network: a backbone and one linear head per task, what every strategy's model comes down to
at inference (adapters merged, a distillation's student, a contrastive run's probe, a multi-task model's heads)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.backbones.base import backbone_inputs
from lightning_modules.pair_heads import PairHead, pair_features, second_sentences

Inputs = dict[str, Tensor]


class ExportedModel(nn.Module):
    """`backbone` (a `lightning_modules.backbones.Backbone`) and `heads` (task name -> `nn.Linear`).

    Inputs are `{"pixel_values": [B, 3, H, W]}` for images or the tokenized dict for text (with the second
    sentences as `pair_*` fields for a bi-encoder, `pair_head`).
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Linear], pair_head: PairHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.pair_head = pair_head

    def embed(self, inputs: Inputs) -> Tensor:
        """What the heads take: the pooled backbone features, or a bi-encoder's pair features."""
        first = backbone_inputs(inputs)
        if self.pair_head is None:
            return self.backbone(first)
        return pair_features(self.backbone(first), self.backbone(second_sentences(inputs)), self.pair_head)

    def forward(self, inputs: Inputs, task: str) -> Tensor:
        """Logits [B, classes] (regression: [B, 1]) of one task."""
        return self.heads[task](self.embed(inputs))
