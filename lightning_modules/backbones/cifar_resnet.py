"""CIFAR ResNet-20/32/44/56 (He et al. 2016, "Deep Residual Learning", section 4.2) with "option A"
identity shortcuts (stride-2 subsampling, zero-padded channels), matching the CIFAR-10 checkpoints of
akamaster/pytorch_resnet_cifar10 key for key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from lightning_modules.backbones.base import Backbone
from lightning_modules.backbones.registry import register_backbone
from lightning_modules.backbones.weights import PretrainedWeightsUnavailable, load_weights, offline, weights_dir

# The checkpoints were trained with ImageNet statistics, not CIFAR's (shared/README.md).
CIFAR_RESNET_PREPROCESSING = Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
WEIGHTS_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/{file}"
WEIGHTS = {  # depth -> (file name, sha256)
    20: ("resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    32: ("resnet32-d509ac18.th", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    44: ("resnet44-014dd654.th", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    56: ("resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
}


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if stride != 1 or in_planes != planes else None

    def shortcut(self, x: Tensor) -> Tensor:
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(Backbone):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes).requires_grad_(False)  # pretrained head, not used by forward
        self.num_features = 64
        self.preprocessing = CIFAR_RESNET_PREPROCESSING
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (blocks - 1)
        layers = []
        for s in strides:
            layers.append(BasicBlock(in_planes, planes, s))
            in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(images)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        stem = [*self.conv1.parameters(), *self.bn1.parameters()]
        return [stem, *(list(layer.parameters()) for layer in (self.layer1, self.layer2, self.layer3))]

    def pretrained_head(self) -> nn.Linear:
        return self.linear


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cifar_resnet_weights(depth: int) -> Path:
    """The checkpoint file: from $TRANSFER_WEIGHTS_DIR, else downloaded there (checksum verified)."""
    file, expected = WEIGHTS[depth]
    path = weights_dir() / file
    name = f"cifar_resnet{depth}"
    if not path.exists():
        if offline():
            raise PretrainedWeightsUnavailable(name, f"{path} does not exist and downloads are disabled")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(WEIGHTS_URL.format(file=file), str(path), hash_prefix=expected)
        except Exception as error:
            raise PretrainedWeightsUnavailable(
                name, f"{path} does not exist and the download failed ({error})"
            ) from error
    if sha256(path) != expected:
        raise ValueError(f"checksum mismatch for {path}: expected sha256 {expected}; delete the file and retry")
    return path


def _builder(depth: int):
    def build(pretrained: bool) -> Backbone:
        backbone = CifarResNet(depth)
        if pretrained:
            load_weights(backbone, cifar_resnet_weights(depth))
        return backbone

    return build


for _depth in WEIGHTS:
    register_backbone(f"cifar_resnet{_depth}", CIFAR_RESNET_PREPROCESSING)(_builder(_depth))
