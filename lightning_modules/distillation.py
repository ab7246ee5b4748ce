"""Knowledge distillation: a student learns from the labels and from a frozen teacher's soft targets.

The teacher (`lightning_modules.teachers`) is named like any backbone (a registered one that comes with its
classifier, e.g. `cifar_resnet56`) or given as a checkpoint of one of our own runs, and built here. It is
held outside the module tree, so it is never in the student's `state_dict`, checkpoints, optimizer or DDP
wrapper, and `.train()` never reaches it.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from datamodules.cache import cache_root
from datamodules.transforms import Preprocessing
from lightning_modules.backbones.base import backbone_inputs
from lightning_modules.backbones.transformers_encoders import TransformersBackbone
from lightning_modules.base import Batch, TransferModule
from lightning_modules.feature_cache import FeatureEncoder
from lightning_modules.tasks import linear_of
from lightning_modules.teachers import Teacher, build_teacher


class Distillation(TransferModule):
    """Hinton knowledge distillation: loss = alpha * kd + (1 - alpha) * task loss (`lightning_modules.losses`).

    Logs `train/kd_loss` and `train/ce_loss` (regression: `train/mse_loss`, and the KD part is the MSE to
    the teacher's prediction). Validation and test report the task loss alone. The student is the usual
    `backbone` + head: random (`pretrained: false`), pretrained, or the teacher's own layers
    (`student_init: teacher`, with `student_layers` for a shallower transformer).

    Args:
        teacher: A backbone that comes with a classifier for this data, e.g. `cifar_resnet56` (CIFAR-10;
            weights from $TRANSFER_WEIGHTS_DIR); its `pretrained_head()` gives the logits.
        teacher_weights: A local weights file for `teacher`.
        teacher_ckpt: Instead of `teacher`: a checkpoint of one of our runs (its backbone and trained head).
        teacher_image_size: Side of the teacher's input; None: its backbone's default. The teacher's view
            is the student's batch, resized and re-normalised for it on the device.
        temperature: Softening temperature T of the KD loss.
        alpha: Weight of the KD loss. 0 trains on the labels alone and never runs the teacher (the
            baseline at otherwise equal settings).
        teacher_cache: Compute the teacher's logits of the un-augmented training set once (keyed by
            teacher weights and data fingerprint, kept on disk) and look them up by sample index every
            step. Needs `data.augment: false` (see `check_cacheable`).
        teacher_cache_dir: Where cached logits persist; None: `teacher_logits/` under the cache root
            ($TRANSFER_CACHE_DIR, default ~/.cache/transfer).
        student_layers: Keep only these encoder layers of a transformers student, e.g. [0, 2, 4].
        student_init: `backbone`: as `pretrained` / `weights` say; `teacher`: the teacher's backbone
            (the `student_layers` of it) and head, DistilBERT-style; `backbone` must name the teacher's
            architecture.
    """

    def __init__(
        self,
        teacher: str | None = None,
        teacher_weights: str | None = None,
        teacher_ckpt: str | None = None,
        teacher_image_size: int | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
        teacher_cache: bool = False,
        teacher_cache_dir: str | None = None,
        student_layers: list[int] | None = None,
        student_init: Literal["backbone", "teacher"] = "backbone",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if self.pair_head is not None:
            raise ValueError("model.pair_head: Distillation takes sentence pairs as one input (a cross-encoder)")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"model.alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        self.alpha = alpha
        self.temperature = temperature
        self.teacher_cache = teacher_cache
        self.teacher_cache_dir = teacher_cache_dir
        if student_layers is not None:
            if not isinstance(self.backbone, TransformersBackbone):
                raise ValueError(f"model.student_layers needs a transformers backbone, not {self.backbone_name}")
            try:
                self.backbone.keep_layers(student_layers)
            except ValueError as error:
                raise ValueError(f"model.student_layers: {error}") from None
        with torch.random.fork_rng(devices=[]):  # no randomness taken: a seed gives the same student as without KD
            built = build_teacher(teacher, teacher_weights, teacher_ckpt, teacher_image_size)
        if built.num_classes != self.linear_head.out_features:
            raise ValueError(
                f"the teacher ({built.name}) has {built.num_classes} outputs but model.num_classes is "
                f"{self.linear_head.out_features}"
            )
        if built.preprocessing.tokenizer != self.backbone.preprocessing.tokenizer:
            raise ValueError(
                f"teacher and student must both take images or share a tokenizer: teacher {built.name} uses "
                f"{built.preprocessing.tokenizer}, model.backbone {self.backbone_name} uses "
                f"{self.backbone.preprocessing.tokenizer}"
            )
        built.set_source(self.backbone.preprocessing)
        # A plain list, not a submodule: out of state_dict, checkpoints, optimizer, DDP and .train().
        self._teacher = [built]
        # [N, C] with teacher_cache; a plain tensor, not a buffer: never saved, never broadcast by DDP.
        self.teacher_logits: Tensor | None = None
        self.teacher_encoder: FeatureEncoder | None = None
        if student_init == "teacher":
            if self.adapter is not None:  # the teacher's weights would have to go under the adapter's layers
                raise ValueError(
                    "model.adapter with model.student_init=teacher is not supported: start the student from "
                    "model.backbone (pretrained, model.weights or model.backbone_ckpt)"
                )
            self._init_from_teacher(student_layers)

    @classmethod
    def for_inference(cls, hparams: dict[str, Any]) -> TransferModule:
        """The student alone (backbone cut to `student_layers`, and head): no teacher is built or needed."""
        base = inspect.signature(TransferModule.__init__).parameters
        student = super().for_inference(
            {"_class_path": "lightning_modules.base.TransferModule", **{k: v for k, v in hparams.items() if k in base}}
        )
        if hparams.get("student_layers") is not None:
            assert isinstance(student.backbone, TransformersBackbone)
            student.backbone.keep_layers(hparams["student_layers"])
        return student

    @property
    def teacher(self) -> Teacher:
        return self._teacher[0]

    def _init_from_teacher(self, layers: list[int] | None) -> None:
        source = self.teacher.backbone
        if layers is not None:
            assert isinstance(source, TransformersBackbone)
            source = copy.deepcopy(source)
            source.keep_layers(layers)
        try:
            self.backbone.load_state_dict(source.state_dict())
            self.linear_head.load_state_dict(linear_of(self.teacher.head).state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"model.student_init=teacher: model.backbone {self.backbone_name} is not the teacher's "
                f"architecture ({self.teacher.name}): {str(error)[:300]}"
            ) from None

    # ------------------------------------------------------------------------------------- fitting

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        source = getattr(datamodule, "preprocessing", None)
        if isinstance(source, Preprocessing) and source.tokenizer is None:
            self.teacher.set_source(source)  # what the student's images really are
        if self.teacher_cache:
            check_cacheable(datamodule)

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)
        if not self.teacher_cache or self.alpha == 0:
            return
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        loader, labels = datamodule.feature_source("train")
        cache_dir = self.teacher_cache_dir or str(cache_root() / "teacher_logits")
        self.teacher_encoder = FeatureEncoder(self.teacher, self.teacher.identity(), datamodule.fingerprint, cache_dir)
        logits = self.teacher_encoder("train", loader)
        if logits.shape != (len(labels), self.teacher.num_classes):
            raise ValueError(f"teacher cache holds {list(logits.shape)} for {len(labels)} training rows")
        self.teacher_logits = logits.to(self.device)
        rank_zero_info(f"teacher cache: logits of {len(labels)} training rows ({self.teacher_encoder.key('train')})")

    @torch.no_grad()
    def teacher_outputs(self, batch: Batch) -> Tensor:
        if not self.teacher_cache:
            return self.teacher(backbone_inputs(batch))
        if self.teacher_logits is None:
            raise RuntimeError("teacher_cache: the logits are computed in on_fit_start; train with Trainer.fit")
        return self.teacher_logits[batch["index"]]

    def compute_loss(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        out = super().compute_loss(batch, stage)
        if stage != "train":
            return out
        task_name = self.task.loss_name
        if self.alpha == 0:
            return {**out, task_name: out["loss"]}
        kd = self.task.distillation_loss(out["logits"], self.teacher_outputs(batch), self.temperature)
        loss = self.alpha * kd + (1 - self.alpha) * out["loss"]
        return {"loss": loss, "logits": out["logits"], "kd_loss": kd, task_name: out["loss"]}


def check_cacheable(datamodule: Any) -> None:
    """Cached logits need un-augmented training data served with row indices (`feature_source`)."""
    if not hasattr(datamodule, "feature_source") or not hasattr(datamodule, "fingerprint"):
        raise ValueError(
            "model.teacher_cache needs a datamodule with feature_source and fingerprint (TransferDataModule, "
            f"TextDataModule); got {type(datamodule).__name__}. Set model.teacher_cache=false for a live teacher"
        )
    if getattr(datamodule, "augment", False):
        raise ValueError(
            "model.teacher_cache=true with data.augment=true: the cached logits are the teacher's view of the "
            "un-augmented images, so the student would be taught about views it never sees (inconsistent "
            "teaching, Beyer et al. 2022, 'Knowledge distillation: A good teacher is patient and consistent'). "
            "Set data.augment=false to cache, or model.teacher_cache=false for a live teacher on each view"
        )
