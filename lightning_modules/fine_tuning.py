"""Fine-tuning: full, or the top k layer groups, with a separate head rate, layer-wise decay, a BatchNorm
policy and LP-FT (a linear-probed head before fine-tuning)."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_modules.base import ParamGroup, TransferModule
from lightning_modules.imagenet_head import check_imagenet_rows, copy_imagenet_rows, imagenet_indices_of
from lightning_modules.linear_probe import fit_linear_probe

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, BATCH_NORMS)]


class FineTuning(TransferModule):
    """Train the backbone with the head. With `pretrained: false` this is training from scratch.

    Args:
        trainable_groups: Train only the top k of `backbone.layer_groups()`; the rest stay frozen (eval
            mode, no gradient). Every group is in the optimizer from step 0, frozen ones without state, so
            schedulers and `callbacks.GradualUnfreezing` see one fixed set of groups. None trains all.
        head_lr: Learning rate of the head; None uses the optimizer's lr.
        lr_decay: Layer-wise decay: the group at depth d from the top gets lr * lr_decay**d (ULMFiT,
            Howard & Ruder 2018, use 1/2.6); 1.0 gives every group the optimizer's lr.
        bn_policy: BatchNorm layers of trained groups: `train` updates their running statistics, `eval`
            keeps the pretrained statistics (affine parameters still train), `freeze` keeps both.
            Frozen groups always behave as `freeze`. None: `eval` for a pretrained backbone (measured: see
            the README's demo), `train` from scratch (random statistics must be learned). With `model.adapter`
            the same: the BatchNorm layers train unless `freeze`.
        head_init: `linear_probe` fits the head on the frozen backbone's features of the un-augmented
            training set before fine-tuning starts (LP-FT, Kumar et al., ICLR 2022); `imagenet_rows`
            copies the pretrained ImageNet classifier's rows for the data's classes (an ImageNet subset,
            see `lightning_modules.imagenet_head`); `zero` starts the head at zero (every class equally likely,
            so the first steps train the head before its error reaches the backbone); `random` is PyTorch's
            default initialisation.
        probe_l2: L2 penalty of that linear probe.
        feature_cache_dir: Where the probe's features persist between runs (true: `features/` in the cache
            root, `$TRANSFER_CACHE_DIR`); None keeps them in memory.
    """

    def __init__(
        self,
        trainable_groups: int | None = None,
        head_lr: float | None = None,
        lr_decay: float = 1.0,
        bn_policy: Literal["train", "eval", "freeze"] | None = None,
        head_init: Literal["random", "zero", "linear_probe", "imagenet_rows"] = "random",
        probe_l2: float = 1e-3,
        feature_cache_dir: bool | str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        pretrained = self.hparams["pretrained"] or self.hparams["weights"] or self.hparams["backbone_ckpt"]
        self.bn_policy = bn_policy or ("eval" if pretrained else "train")
        if self.adapter is not None and self.bn_policy != "freeze":  # the adapter froze them: BN follows bn_policy
            for norm in batch_norms(self.backbone):
                norm.requires_grad_(True)
        groups = self.backbone.layer_groups()
        if trainable_groups is not None:
            if not 0 <= trainable_groups <= len(groups):
                raise ValueError(
                    f"model.trainable_groups must be in [0, {len(groups)}] for backbone {self.backbone_name}, "
                    f"got {trainable_groups}"
                )
            for group in groups[: len(groups) - trainable_groups]:
                for param in group:
                    param.requires_grad_(False)
        self.head_lr = head_lr
        self.lr_decay = lr_decay
        if not 0 < lr_decay <= 1:
            raise ValueError(f"model.lr_decay must be in (0, 1], got {lr_decay}")
        if head_init == "linear_probe" and self.regression:
            raise ValueError("model.head_init=linear_probe fits a classifier; use `random` for regression tasks")
        if head_init == "imagenet_rows":
            check_imagenet_rows(self, "model.head_init=imagenet_rows")
        self.head_init = head_init
        if head_init == "zero":
            nn.init.zeros_(self.linear_head.weight)
            nn.init.zeros_(self.linear_head.bias)
        self.probe_l2 = probe_l2
        self.feature_cache_dir = feature_cache_dir
        self.train()

    def train(self, mode: bool = True) -> FineTuning:
        if self.bn_policy == "freeze":
            for norm in batch_norms(self.backbone):
                norm.requires_grad_(False)
        super().train(mode)  # modules with only frozen parameters (frozen BN included) go to eval mode
        if mode and self.bn_policy == "eval":
            for norm in batch_norms(self.backbone):
                norm.eval()
        return self

    def check_data(self, datamodule: Any) -> None:
        if self.head_init == "imagenet_rows":
            imagenet_indices_of(datamodule, "model.head_init=imagenet_rows")

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is not None:  # resumed: the checkpoint already holds the head
            return
        if self.head_init == "imagenet_rows":
            copy_imagenet_rows(self, "model.head_init=imagenet_rows")
        if self.head_init == "linear_probe":  # LP-FT's first step
            datamodule: Any = getattr(self.trainer, "datamodule", None)
            if not hasattr(datamodule, "feature_source"):
                raise ValueError(
                    "model.head_init=linear_probe needs a TransferDataModule or TextDataModule (a feature source)"
                )
            loader, labels = datamodule.feature_source("train")
            encoder = self.feature_encoder(datamodule, self.feature_cache_dir)
            accuracy = fit_linear_probe(self.linear_head, encoder("train", loader), labels, l2=self.probe_l2)
            rank_zero_info(f"LP-FT: linear probe fitted on frozen features, train accuracy {accuracy:.3f}")

    def param_groups(self) -> list[ParamGroup]:
        groups = self.backbone.layer_groups()
        grouped = {id(p) for group in groups for p in group}
        stray = [n for n, p in self.backbone.named_parameters() if p.requires_grad and id(p) not in grouped]
        if stray:
            raise ValueError(f"trainable backbone parameters outside every layer group: {stray[:5]}")
        result = [
            {
                "name": f"backbone.{i}",
                "params": list(group),  # frozen ones too: no gradient, so no state and no update
                "lr_scale": self.lr_decay ** (len(groups) - 1 - i),
            }
            for i, group in enumerate(groups)
        ]
        head: ParamGroup = {"name": "head", "params": list(self.head.parameters())}
        if self.head_lr is not None:
            head["lr"] = self.head_lr
        return [*result, head]
