"""Distillation teachers: a frozen classifier named like any backbone (+ weights), or the backbone and head of
a checkpoint of one of our own runs, fed its own view of the student's images."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.transforms import Preprocessing
from lightning_modules.backbones import Backbone, PretrainedWeightsUnavailable, create_backbone, weights_dir
from lightning_modules.backbones.transformers_encoders import TransformersBackbone
from lightning_modules.checkpoints import read_checkpoint
from lightning_modules.tasks import linear_of


class Teacher(nn.Module):
    """A frozen classifier (backbone + head) that makes its own view of the student's images: resized to
    `image_size` and re-normalised with its own mean/std on the device (nothing to do where the two agree,
    nor for text, where teacher and student share the tokenizer)."""

    def __init__(self, backbone: Backbone, head: nn.Module, name: str, image_size: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.preprocessing = backbone.preprocessing
        self.image_size = image_size or self.preprocessing.image_size
        self.set_source(self.preprocessing)
        self.requires_grad_(False).eval()

    @property
    def num_classes(self) -> int:
        return linear_of(self.head).out_features

    def set_source(self, source: Preprocessing) -> None:
        """The normalisation of the images it is given (the student's): x_teacher = x * scale + shift."""
        self.source = source
        mean, std = torch.tensor(self.preprocessing.mean), torch.tensor(self.preprocessing.std)
        self._scale = (torch.tensor(source.std) / std).view(1, 3, 1, 1)
        self._shift = ((torch.tensor(source.mean) - mean) / std).view(1, 3, 1, 1)
        self._renormalise = (source.mean, source.std) != (self.preprocessing.mean, self.preprocessing.std)

    def identity(self) -> str:
        """The teacher and the view it gets, for cache keys (its weights are hashed separately)."""
        view = {"size": self.image_size, "teacher": asdict(self.preprocessing), "student": asdict(self.source)}
        return json.dumps({"teacher": self.name, "view": view}, sort_keys=True)

    def view(self, inputs: Any) -> Any:
        if not isinstance(inputs, Tensor):  # the tokenized text batch
            return inputs
        images = inputs.to(next(self.head.parameters()).dtype)  # the step may run in bf16-true
        if self._renormalise:  # per-channel affine: commutes with the resize below
            images = images * self._scale.to(images) + self._shift.to(images)
        if images.shape[-2:] != (self.image_size, self.image_size):
            mode = self.preprocessing.interpolation
            smooth = mode in ("bilinear", "bicubic")
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode=mode,
                align_corners=False if smooth else None,
                antialias=smooth,
            )
        return images

    def forward(self, inputs: Any) -> Tensor:
        return self.head(self.backbone(self.view(inputs)))


def registry_teacher(name: str, weights: str | None, image_size: int | None) -> Teacher:
    """A registered (or timm/torchvision) backbone with the classifier it was trained with."""
    try:
        backbone = create_backbone(name, pretrained=True, weights=weights)
    except PretrainedWeightsUnavailable as error:
        reason = str(error).split(". Give a local file")[0]  # its remedy names the student's keys
        raise ValueError(
            f"model.teacher={name!r} needs its pretrained weights: give the file as model.teacher_weights or put "
            f"it in $TRANSFER_WEIGHTS_DIR ({weights_dir()}); {reason}"
        ) from error
    head = backbone.pretrained_head()
    if head is None:
        raise ValueError(
            f"model.teacher={name!r} has no pretrained classifier: train one on this data (e.g. FineTuning) "
            "and give that run's checkpoint as model.teacher_ckpt"
        )
    return Teacher(backbone, head, name, image_size)


def checkpoint_teacher(path: str, image_size: int | None) -> Teacher:
    """Backbone + head of a TransferModule checkpoint (hyper_parameters name the backbone), weights only."""
    file, checkpoint = read_checkpoint(path, "model.teacher_ckpt")
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "backbone" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"model.teacher_ckpt: {file} is not a checkpoint of a TransferModule run (no backbone)")
    backbone = create_backbone(hparams["backbone"], pretrained=False, backbone_kwargs=hparams.get("backbone_kwargs"))
    if hparams.get("student_layers"):  # the teacher was itself a distilled, shallower student
        assert isinstance(backbone, TransformersBackbone)
        backbone.keep_layers(hparams["student_layers"])
    head: nn.Module = nn.Linear(backbone.num_features, hparams["num_classes"])
    if hparams.get("head_dropout", 0.0) > 0:
        head = nn.Sequential(nn.Dropout(hparams["head_dropout"]), head)
    options = hparams.get("backbone_kwargs")
    name = f"{hparams['backbone']}{' ' + json.dumps(options, sort_keys=True) if options else ''} from {file.name}"
    teacher = Teacher(backbone, head, name, image_size)
    state = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(("backbone.", "head."))}
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"model.teacher_ckpt: {file} does not match its own backbone: {error}") from error
    return teacher


def build_teacher(name: str | None, weights: str | None, ckpt: str | None, image_size: int | None) -> Teacher:
    """Exactly one of `name` (+ `weights`) and `ckpt`; errors name the `model.*` key to change."""
    if (name is None) == (ckpt is None):
        raise ValueError(
            "give exactly one of model.teacher (a backbone with its classifier, e.g. cifar_resnet56) and "
            "model.teacher_ckpt (a checkpoint of a run of this framework, e.g. "
            "--model.init_args.teacher_ckpt runs/.../checkpoints/last.ckpt)"
        )
    if ckpt is not None:
        if weights is not None:
            raise ValueError("model.teacher_weights belongs to model.teacher; a teacher_ckpt holds its own weights")
        return checkpoint_teacher(ckpt, image_size)
    assert name is not None
    return registry_teacher(name, weights, image_size)
