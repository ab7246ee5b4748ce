"""The backbone registry: registration through entry points (no import list), `backbone_kwargs` reaching each
library's builder or refused by name, and generic transformers encoders (pooling, inputs, keeping layers)."""

import pytest
import torch
from timm.layers import DropPath
from transformers import AutoTokenizer, DistilBertConfig, ModernBertConfig, T5Config

from experiments.cli import preprocessing_of
from lightning_modules import FeatureExtraction
from lightning_modules.backbones import (
    BadBackboneOption,
    backbone_preprocessing,
    create_backbone,
    registered_backbones,
    registry,
)
from lightning_modules.backbones.transformers_encoders import layer_stack, minilm_l6_path

PLUGIN = """
from torch import nn
from datamodules.transforms import Preprocessing
from lightning_modules.backbones import Backbone, register_backbone


class Plugin(Backbone):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(3, width)
        self.num_features = width
        self.preprocessing = Preprocessing(8)

    def forward(self, images):
        return self.fc(images.mean((2, 3)))

    def layer_groups(self):
        return [list(self.fc.parameters())]


@register_backbone("plugin_linear", Preprocessing(8))
def build(pretrained, width=5):
    return Plugin(width)
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path that names its module under the `transfer.backbones` entry points, and one
    whose module does not exist; the registry forgets what it discovered, and gets it back afterwards."""
    (tmp_path / "plugin_backbones.py").write_text(PLUGIN)
    info = tmp_path / "plugin_backbones-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-backbones\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[transfer.backbones]\nmine = plugin_backbones\nbroken = plugin_backbones_missing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.discover_backbones()  # the project's own, before the copy that the test may change
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_discovered", False)


def test_a_third_party_backbone_registers_through_its_entry_point_without_being_imported(installed_plugin):
    with pytest.warns(UserWarning, match="backbone plugin broken = 'plugin_backbones_missing'.*failed to import"):
        names = registered_backbones()
    assert "plugin_linear" in names and "efficientnet_lite0" in names  # the broken plugin costs nothing else
    backbone = create_backbone("plugin_linear", pretrained=False, backbone_kwargs={"width": 7})
    assert backbone.num_features == 7 and backbone(torch.rand(2, 3, 8, 8)).shape == (2, 7)
    assert backbone_preprocessing("plugin_linear").image_size == 8


def test_backbone_kwargs_reach_timm_torchvision_transformers_and_registered_builders():
    vit = create_backbone(
        "timm:vit_tiny_patch16_224", False, backbone_kwargs={"img_size": 32, "depth": 2, "drop_path_rate": 0.2}
    )
    assert len(vit.model.blocks) == 2 and isinstance(vit.model.blocks[1].drop_path1, DropPath)
    assert vit.model.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    assert vit(torch.rand(1, 3, 32, 32)).shape == (1, 192)
    assert preprocessing_of("timm:vit_tiny_patch16_224", {"img_size": 32})["image_size"] == 32  # the CLI's link
    assert preprocessing_of("timm:vit_tiny_patch16_224", None)["image_size"] == 224
    lite = create_backbone("efficientnet_lite0", False, backbone_kwargs={"drop_path_rate": 0.3})
    assert max(m.drop_prob for m in lite.model.modules() if isinstance(m, DropPath)) > 0
    resnet = create_backbone("torchvision:resnet18", False, backbone_kwargs={"zero_init_residual": True})
    assert torch.count_nonzero(resnet.model.layer1[0].bn2.weight) == 0
    bert = create_backbone("minilm_l6", False, backbone_kwargs={"hidden_dropout_prob": 0.3, "pooling": "cls"})
    assert bert.model.config.hidden_dropout_prob == 0.3 and bert.pooling == "cls"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("tiny_cnn", {"width": 4}, r"\['width'\]: backbone 'tiny_cnn' does not take them"),
        ("timm:vit_tiny_patch16_224", {"img_sise": 32}, r"\['img_sise'\]: backbone 'vit_tiny_patch16_224'"),
        ("torchvision:resnet18", {"depth": 3}, r"\['depth'\]: backbone 'resnet18'"),
        ("minilm_l6", {"hiden_size": 8}, r"\['hiden_size'\].*not settings of its BertConfig"),
        (
            "minilm_l6",
            {"pooling": "max"},
            r"model.backbone_kwargs.pooling: expected one of cls, mean, pooler, got 'max'",
        ),
    ],
)
def test_an_option_the_backbone_does_not_take_is_refused_naming_it(name, options, message):
    with pytest.raises((BadBackboneOption, ValueError), match=message):
        create_backbone(name, pretrained=False, backbone_kwargs=options)


def test_a_pooling_option_changes_the_feature_cache_key_and_the_features():
    cls = FeatureExtraction(backbone="minilm_l6", pretrained=False, num_classes=2, backbone_kwargs={"pooling": "cls"})
    mean = FeatureExtraction(backbone="minilm_l6", pretrained=False, num_classes=2)
    assert cls.backbone_identity != mean.backbone_identity == "minilm_l6"  # no options: the key of earlier runs


def encoder_folder(tmp_path, config):
    config.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_l6_path()).save_pretrained(tmp_path)
    return f"hf:{tmp_path}"


def test_t5_loads_as_its_encoder_with_mean_pooling_and_distilbert_gets_no_token_type_ids(tmp_path):
    t5 = create_backbone(
        encoder_folder(
            tmp_path / "t5", T5Config(vocab_size=99, d_model=16, num_layers=2, num_heads=2, d_ff=32, d_kv=8)
        ),
        pretrained=False,
    )
    assert type(t5.model).__name__ == "T5EncoderModel" and t5.pooling == "mean"
    distil_name = encoder_folder(
        tmp_path / "distil", DistilBertConfig(vocab_size=99, dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    )
    distil = create_backbone(distil_name, pretrained=False)
    assert distil.pooling == "cls" and distil.model_inputs == ("input_ids", "attention_mask")
    batch = {k: torch.ones(2, 4, dtype=torch.long) for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert distil(batch).shape == (2, 16) and t5(batch).shape == (2, 16)
    with pytest.raises(ValueError, match="DistilBertModel has no pooler"):
        create_backbone(distil_name, False, backbone_kwargs={"pooling": "pooler"})


def test_keep_layers_shortens_any_encoders_stack_and_its_per_layer_config(tmp_path):
    config = ModernBertConfig(
        vocab_size=99, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2,
    )  # fmt: skip
    backbone = create_backbone(encoder_folder(tmp_path, config), pretrained=False)
    _, layers = layer_stack(backbone.model)
    third = {k: v.clone() for k, v in layers[2].state_dict().items()}
    types = list(backbone.model.config.layer_types)
    backbone.keep_layers([0, 2])
    path, kept = layer_stack(backbone.model)
    assert path == "layers" and len(kept) == 2 == backbone.model.config.num_hidden_layers
    assert backbone.model.config.layer_types == [types[0], types[2]]
    assert all(torch.equal(third[k], v) for k, v in kept[1].state_dict().items())
    assert len(backbone.layer_groups()) == 4  # embeddings, two layers, the final norm
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    assert backbone(batch).shape == (2, 16)
