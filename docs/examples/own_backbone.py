"""A backbone of your own: torchvision's ResNet-18 under the name `tv_resnet18`.

A backbone maps a batch of images (or token ids) to one feature vector per input and says how wide that is
(`num_features`), what input it expects (`preprocessing`: size, mean / std, interpolation, which the CLI
links into the datamodule) and how it splits into layer groups, input side first (`layer_groups`: partial
fine-tuning, gradual unfreezing and layer-wise rates count in groups). `pretrained_head` returns the source
classifier if it has one (zero-shot evaluation, LEEP / NCE in `transfer select`)."""

import torchvision
from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones import Backbone, register_backbone

IMAGENET = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")


class TorchvisionResNet18(Backbone):
    def __init__(self, pretrained: bool):
        super().__init__()
        weights = torchvision.models.ResNet18_Weights.DEFAULT if pretrained else None  # downloads once
        self.net = torchvision.models.resnet18(weights=weights)
        self.source_head = self.net.fc.requires_grad_(False)  # kept for zero-shot use, never trained
        self.net.fc = nn.Identity()
        self.num_features = 512
        self.preprocessing = IMAGENET

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        stem = [*self.net.conv1.parameters(), *self.net.bn1.parameters()]
        stages = [self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4]
        return [stem, *[list(stage.parameters()) for stage in stages]]

    def pretrained_head(self) -> nn.Linear:
        return self.source_head


register_backbone("tv_resnet18", IMAGENET)(TorchvisionResNet18)


if __name__ == "__main__":
    from lightning import Trainer

    from datamodules import SyntheticDataModule
    from lightning_modules import FineTuning, backbone_preprocessing

    model = FineTuning(backbone="tv_resnet18", pretrained=False, num_classes=4, trainable_groups=2)  # the last 2
    data = SyntheticDataModule(batch_size=8, image_size=32, preprocessing=backbone_preprocessing("tv_resnet18"))
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    print(f"{trainable:,} of {sum(p.numel() for p in model.backbone.parameters()):,} backbone weights trained")
