"""Tiny random backbones for tests: milliseconds per step, no weights to fetch."""

from __future__ import annotations

from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones.base import Backbone
from lightning_modules.backbones.registry import register_backbone
from lightning_modules.backbones.transformers_encoders import TransformersBackbone, minilm_tokenizer
from lightning_modules.backbones.weights import PretrainedWeightsUnavailable

TINY_PREPROCESSING = Preprocessing(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")


class TinyCNN(Backbone):
    """Two conv-BN-ReLU blocks and global pooling (BatchNorm on purpose: freezing tests need it)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = 2 * width
        self.preprocessing = TINY_PREPROCESSING

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.block2(self.block1(images)))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.block1.parameters()), list(self.block2.parameters())]


class TinyMLP(Backbone):
    """Pooling to 4x4 and two linear layers: no BatchNorm, no dropout, so runs are exactly comparable."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc1 = nn.Sequential(nn.Linear(48, hidden), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.num_features = hidden
        self.preprocessing = TINY_PREPROCESSING

    def forward(self, images: Tensor) -> Tensor:
        return self.fc2(self.fc1(self.pool(images)))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.fc1.parameters()), list(self.fc2.parameters())]


def _random_only(name: str, cls: type[Backbone]):
    def build(pretrained: bool) -> Backbone:
        if pretrained:
            raise PretrainedWeightsUnavailable(name, "it is a tiny test backbone that has none")
        return cls()

    return build


register_backbone("tiny_cnn", TINY_PREPROCESSING)(_random_only("tiny_cnn", TinyCNN))
register_backbone("tiny_mlp", TINY_PREPROCESSING)(_random_only("tiny_mlp", TinyMLP))


@register_backbone("tiny_bert", Preprocessing(tokenizer=minilm_tokenizer()))
def tiny_bert(pretrained: bool) -> Backbone:
    """Two layers, width 32, MiniLM's vocabulary (so its local tokenizer fits): for tests."""
    from transformers import BertConfig, BertModel

    if pretrained:
        raise PretrainedWeightsUnavailable("tiny_bert", "it is a tiny test backbone that has none")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return TransformersBackbone(BertModel(config), Preprocessing(tokenizer=minilm_tokenizer()), "cls")
