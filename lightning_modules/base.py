"""TransferModule: backbone + head + metrics + parameter groups + optimizer wiring.

A strategy is one short subclass: it decides what is trainable (`param_groups`) and, where it differs
from cross-entropy, how the loss is computed (`compute_loss`). Everything else lives here once.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable, instantiate_module
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from lightning_modules.adapters import BitFit, PeftConfig, adapter_config, attach_adapter
from lightning_modules.backbones import create_backbone
from lightning_modules.backbones.base import backbone_inputs
from lightning_modules.checkpoints import read_checkpoint
from lightning_modules.feature_cache import FeatureEncoder
from lightning_modules.finite import check_finite_losses, check_finite_state
from lightning_modules.frozen_base import (
    ADAPTER_ONLY,
    FROZEN_BASE,
    frozen_base_keys,
    restore_frozen_base,
    strip_frozen_base,
)
from lightning_modules.lightning_internals import epoch_batches_done, loggers_write_this_step
from lightning_modules.metrics import shift_means
from lightning_modules.pair_heads import PairHead, init_cosine_head, pair_features, pair_width, second_sentences
from lightning_modules.tasks import Task, linear_of

Batch = dict[str, Tensor]
ParamGroup = dict[str, Any]


class TransferModule(LightningModule):
    """Base of every strategy.

    Args:
        backbone: Registered backbone name, any timm / torchvision model name, or `hf:<transformers encoder>`.
        num_classes: Number of target classes, 1 for regression (linked from the datamodule by the CLI).
        metrics: The task's official metrics (`lightning_modules.metrics.METRICS`); `score` is their mean.
            Linked from the datamodule; None: accuracy.
        val_names: Names of the validation sets, suffixes of their metrics (MNLI: `m`, `mm`); linked.
        pretrained: Start from the backbone's pretrained weights (an error if they cannot be obtained).
        weights: A local weights file for the backbone; wins over `pretrained`.
        backbone_kwargs: Options of the backbone's builder: timm's `create_model` (`drop_path_rate`,
            `img_size`, ...), torchvision's `get_model`, a transformers encoder's `pooling` (`cls`, `mean`,
            `pooler`) and config settings (`attn_implementation`, `hidden_dropout_prob`, ...); a registered
            backbone's own options. A key the builder does not take is an error.
        backbone_ckpt: A Lightning checkpoint of one of our runs (e.g. `Contrastive` pretraining): the
            backbone starts from its `backbone.*` weights; projector and head are dropped. Wins over
            `pretrained`; give it or `weights`, not both.
        head_dropout: Dropout before the linear head.
        label_smoothing: Label smoothing of the cross-entropy.
        optimizer: Optimizer class and its arguments; its `lr` is the base learning rate.
        lr_scheduler: Optional scheduler; one that takes `total_steps` gets the run's number of steps.
        pair_head: Sentence pairs as a bi-encoder (`lightning_modules.pair_heads`, with
            `data.separate_pairs: true`): each sentence encoded alone, the head on their `cosine` or on
            `concat` ([u, v, |u-v|, u*v]); None: the pair as one input (a cross-encoder).
        pair_scale: Initial slope of the `cosine` head for regression: predictions start at
            `pair_scale * cos` (5 for STS-B's 0-5 scores).
        class_names: The training data's class names in label order, recorded when training starts (given
            only by a checkpoint). A test on other data with the same class names, all of them or some, maps
            its labels to the model's by name (cross-dataset evaluation); other names are an error.
        inputs: How the training data made its inputs ready for the model at evaluation (image size and
            normalisation, or tokenizer and `max_length`) and its label names, recorded when training starts
            (given only by a checkpoint; `datamodules.*.input_spec`): what `transfer export` writes out.
        adapter: Parameter-efficient fine-tuning (`lightning_modules.adapters`): a peft config such as
            `peft.LoraConfig` (LoRA; DoRA with `use_dora: true`) or `peft.IA3Config`, or `BitFit`. The
            backbone is frozen except for the adapter; the head always trains. Checkpoints then hold the
            trained weights and a fingerprint of the frozen base instead of the base (`frozen_base`).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        num_classes: int = 10,
        pretrained: bool = True,
        weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        backbone_ckpt: str | None = None,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        metrics: list[str] | None = None,
        val_names: list[str] | None = None,
        adapter: PeftConfig | BitFit | None = None,
        pair_head: PairHead | None = None,
        pair_scale: float = 5.0,
        class_names: list[str] | None = None,
        inputs: dict[str, Any] | None = None,
    ):
        super().__init__()
        # Callables are not checkpoint data (and would break weights_only loading); the CLI config holds them.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.task = Task(num_classes, tuple(metrics) if metrics else None, label_smoothing)
        self.backbone_name = backbone
        if weights is not None and backbone_ckpt is not None:
            raise ValueError("give model.weights or model.backbone_ckpt, not both: each sets the backbone's weights")
        self.backbone = create_backbone(
            backbone, pretrained and backbone_ckpt is None, weights=weights, backbone_kwargs=backbone_kwargs
        )
        if backbone_ckpt is not None:
            load_backbone_ckpt(self.backbone, backbone, backbone_ckpt)
        self.adapter = adapter
        self._base_ids = {id(p) for p in self.backbone.parameters()}  # the pretrained base, before any adapter
        if adapter is not None:
            attach_adapter(self.backbone, adapter)
            if not isinstance(self.hparams["adapter"], dict):  # outside the CLI: keep checkpoints plain data
                self.hparams["adapter"] = adapter_config(adapter)
        self.pair_head = pair_head
        self.pair_scale = pair_scale
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.val_names = val_names or [""]
        self.shift_sets: list[str] = []  # the datamodule's corrupted test sets, tested after the clean ones
        self.test_labels: Tensor | None = None  # test label -> model label, when the test data names its classes
        self.init_task_modules()
        self._step_values: dict[str, tuple[Tensor, int, bool]] = {}  # this training step's, to be logged

    @property
    def regression(self) -> bool:
        return self.task.regression

    def init_task_modules(self) -> None:
        """The head and one `TaskMetrics` per evaluation set (attributes, not a ModuleDict: `train` is an nn.Module
        method). A strategy with other heads or metrics (`MultiTask`: one per task) builds its own instead."""
        self.head = self.build_head()
        self.train_metrics = nn.ModuleList([self.task.new_metrics()])
        self.val_metrics = nn.ModuleList([self.evaluation_metrics() for _ in self.val_names])
        self.test_metrics = nn.ModuleList([self.evaluation_metrics() for _ in self.val_names])

    def build_head(self) -> nn.Module:
        """The task's head on the backbone's features (on the pair's, with a bi-encoder); a `cosine` pair head of a
        regression starts as `pair_scale * cos`."""
        head = self.task.head(pair_width(self.backbone.num_features, self.pair_head), self.hparams["head_dropout"])
        if self.pair_head == "cosine" and self.regression:
            init_cosine_head(linear_of(head), self.pair_scale)
        return head

    @property
    def backbone_identity(self) -> str:
        """The backbone's name and options: with its weights, what its features depend on (feature cache keys)."""
        options = self.hparams.get("backbone_kwargs")
        return f"{self.backbone_name} {json.dumps(options, sort_keys=True)}" if options else self.backbone_name

    def feature_encoder(self, datamodule: Any, cache_dir: bool | str | None) -> FeatureEncoder:
        """The backbone's features (its weights as they are now) of the datamodule's sets, cached in `cache_dir`."""
        return FeatureEncoder(self.backbone, self.backbone_identity, datamodule.fingerprint, cache_dir)

    @property
    def linear_head(self) -> nn.Linear:
        """The head's linear layer (behind its dropout, if any)."""
        return linear_of(self.head)

    @classmethod
    def for_inference(cls, hparams: dict[str, Any]) -> TransferModule:
        """The model of a checkpoint's `hyper_parameters` (its `_class_path` naming this class), built for
        inference: what `forward` needs and nothing that only training needs (see `Distillation`)."""
        return instantiate_module(TransferModule, {k: v for k, v in hparams.items() if k != "_instantiator"})

    def check_data(self, datamodule: Any) -> None:
        """Refuse (ValueError) data this strategy cannot use; the CLI calls it before anything is written."""

    def inference_heads(self) -> dict[str, nn.Module]:
        """The trained heads by task name (one task: `default`): what `transfer export` writes out."""
        return {"default": self.head}

    # ------------------------------------------------------------------------------------ forward

    def backbone_is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, batch: Batch) -> Tensor:
        if "features" in batch:  # precomputed by the feature cache
            return batch["features"]
        inputs = backbone_inputs(batch)
        with torch.no_grad() if self.backbone_is_frozen() else contextlib.nullcontext():
            if ("pair_input_ids" in batch) != (self.pair_head is not None):
                raise ValueError(
                    f"model.pair_head={self.pair_head} needs data.separate_pairs="
                    f"{str(self.pair_head is not None).lower()}: a bi-encoder takes the two sentences apart"
                )
            if self.pair_head is None:
                return self.backbone(inputs)
            return pair_features(self.backbone(inputs), self.backbone(second_sentences(batch)), self.pair_head)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.features(batch))

    def compute_loss(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        logits = self(batch)
        return {"loss": self.task.loss(logits, batch["labels"]), "logits": logits}

    def train(self, mode: bool = True) -> TransferModule:
        """Frozen means frozen: a module whose parameters are all frozen stays in eval mode, so its
        BatchNorm statistics and dropout never change while the rest trains."""
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps modules in whatever mode they are in; re-apply the frozen rule every epoch
        # (freezing may change between epochs, e.g. gradual unfreezing).
        self.train()

    # ------------------------------------------------------------------------------------- steps

    def evaluation_metrics(self) -> nn.Module:
        """The metrics of one evaluation set (a validation or test set, a shift set)."""
        return self.task.new_metrics()

    def on_train_start(self) -> None:
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        names = getattr(datamodule, "class_names", None)
        if names is not None:
            self.hparams["class_names"] = list(names)  # into every checkpoint: the label space trained on
        inputs = datamodule.input_spec() if hasattr(datamodule, "input_spec") else None
        if inputs is not None:
            self.hparams["inputs"] = inputs  # and how its inputs were made ready (`transfer export`)

    def on_test_start(self) -> None:
        """Map the test data's labels to the model's by class name; test the corrupted sets (`shift_sets`) too."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self.test_labels = label_map(self.hparams.get("class_names"), getattr(datamodule, "class_names", None))
        if self.test_labels is not None:
            tested, classes = len(self.test_labels), len(self.hparams["class_names"])
            rank_zero_info(f"test data: {tested} of the model's {classes} classes, labels mapped by class name")
            self.test_labels = self.test_labels.to(self.device)
        self.shift_sets = list(getattr(datamodule, "shift_sets", []))
        wanted = len(self.val_names) + len(self.shift_sets)
        if len(self.test_metrics) != wanted:
            self.test_metrics = nn.ModuleList([self.evaluation_metrics() for _ in range(wanted)]).to(self.device)

    def shift_set(self, stage: str, index: int) -> str | None:
        """The name of evaluation set `index` when it is a shift set (tested after the val-like sets), else None."""
        shifted = index - len(self.val_names)
        return self.shift_sets[shifted] if stage == "test" and shifted >= 0 else None

    def metric_name(self, stage: str, index: int, name: str) -> str:
        """`val/acc`, `val/acc_mm` (MNLI's second set), or `test/<corruption>/<severity>/acc` (a shift set)."""
        shift = self.shift_set(stage, index)
        if shift is not None:
            return f"{stage}/{shift}/{name}"
        set_name = self.val_names[index] if stage != "train" else ""
        return f"{stage}/{name}_{set_name}" if set_name else f"{stage}/{name}"

    def log_shift_means(self, stage: str, values: dict[str, dict[str, Tensor]]) -> None:
        """Means over the shift sets' `values` (set name -> metric -> value): per corruption over its severities
        (`test/<corruption>/acc`) and over every set (`test/corruptions/acc`, the mean corruption accuracy)."""
        for name, value in shift_means(values).items():
            self.log(f"{stage}/{name}", value)

    def _step(self, batch: Batch, stage: str, dataloader_idx: int = 0, batch_idx: int = 0) -> Tensor:
        out = self.compute_loss(batch, stage)
        size = len(batch["labels"])
        if stage == "train":  # stop before a NaN/inf reaches the weights, naming the step and the term
            check_finite_losses(out, self.global_step, self.current_epoch, batch_idx)
        for name, value in out.items():
            if name == "logits":
                continue
            if stage == "train":
                self.log_step_value(f"train/{name}", value, size, prog_bar=name == "loss")
            else:
                self.log(
                    self.metric_name(stage, dataloader_idx, name),
                    value,
                    batch_size=size,
                    prog_bar=name == "loss",
                    sync_dist=True,
                    add_dataloader_idx=False,
                )
        getattr(self, f"{stage}_metrics")[dataloader_idx].update(out["logits"], batch["labels"])
        return out["loss"]

    def log_step_value(self, name: str, value: Tensor, batch_size: int, prog_bar: bool = False) -> None:
        """A per-step training value (`train/loss`, `train/kd_loss`, ...), logged at the end of the step
        where the loggers write it (see `on_train_batch_end`)."""
        self._step_values[name] = (value.detach(), batch_size, prog_bar)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log this step's values where Lightning writes them (every `trainer.log_every_n_steps` steps, and
        at a step where a callback stops the run) and at the last step of an epoch or of the run, so that
        callbacks reading `trainer.callback_metrics` see the latest step; the progress bar's loss refreshes
        there too. A value logged at every step would cost about 0.2 ms of Python each time, which a small
        model's step feels. Decided here, after the callbacks' hooks, so that a stop at this step counts."""
        values, self._step_values = self._step_values, {}
        trainer = self.trainer
        epoch_ends = epoch_batches_done(trainer)
        run_ends = 0 < trainer.max_steps <= self.global_step
        if loggers_write_this_step(trainer) or epoch_ends or run_ends:
            for name, (value, size, prog_bar) in values.items():
                self.log(name, value, on_step=True, on_epoch=False, batch_size=size, prog_bar=prog_bar)

    def _log_metrics(self, stage: str) -> None:
        """Compute (synchronised across ranks by torchmetrics), log and reset each set's metrics;
        `{stage}/score` is the mean over the sets."""
        scores, shifted = [], {}
        for index, metrics in enumerate(getattr(self, f"{stage}_metrics")):
            values = metrics.compute()
            metrics.reset()
            shift = self.shift_set(stage, index)
            named = shift is None and self.metric_name(stage, index, "score") != f"{stage}/score"  # MNLI's m, mm
            for name, value in values.items():
                if name != "score" or named:
                    self.log(self.metric_name(stage, index, name), value, prog_bar=stage == "val" and name == "score")
            if shift is not None:
                shifted[shift] = values
            else:
                scores.append(values["score"])
        self.log(f"{stage}/score", torch.stack(scores).mean(), prog_bar=stage == "val")
        self.log_shift_means(stage, shifted)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", batch_idx=batch_idx)

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "val", dataloader_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.test_labels is not None:
            batch = {**batch, "labels": self.test_labels[batch["labels"]]}
        self._step(batch, "test", dataloader_idx)

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every checkpoint (best, last, on signal) holds finite tensors only, or is not written at all.
        check_finite_state(checkpoint["state_dict"], "checkpoint state_dict")
        check_finite_state(checkpoint.get("optimizer_states", []), "checkpoint optimizer_states")
        if self.adapter is not None:
            strip_frozen_base(checkpoint, frozen_base_keys(self, self._base_ids), self.base_source())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_frozen_base(checkpoint, self, self.base_source())

    def base_source(self) -> dict[str, Any]:
        """Where the backbone's pretrained weights come from, for the frozen-base fingerprint."""
        hp = self.hparams
        weights = hp["weights"] or hp["backbone_ckpt"] or ("pretrained" if hp["pretrained"] else "random init")
        return {"backbone": self.backbone_name, "weights": str(weights)}

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.task.predict(self(batch))

    # ------------------------------------------------------------------------------- optimization

    def param_groups(self) -> list[ParamGroup]:
        """Named parameter groups. A group may set `lr` (absolute) or `lr_scale` (times the optimizer's lr)."""
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "head", "params": list(self.head.parameters())},
        ]

    def configure_optimizers(self) -> Any:
        groups = [g for g in self.param_groups() if g["params"]]
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_scale", 1.0)
        self.report_trainable(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self._scheduler_config(optimizer)}

    def report_trainable(self, optimizer: torch.optim.Optimizer) -> None:
        """Say what trains: trainable parameters, their share of the model, and each optimizer group (name, trained
        parameters, learning rate); the counts go to the loggers too."""
        params = list(self.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        lines = [f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f} %)"]
        for index, group in enumerate(optimizer.param_groups):
            count = sum(p.numel() for p in group["params"] if p.requires_grad)
            lines.append(f"  optimizer group {group.get('name', index)}: {count:,} trained, lr {group['lr']:.3g}")
        rank_zero_info("\n".join(lines))
        counts = {"trainable_params": trainable, "total_params": total, "trainable_share": trainable / max(total, 1)}
        for logger in self.loggers:
            logger.log_hyperparams(counts)

    def _scheduler_config(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        factory = self.scheduler_factory
        assert factory is not None
        kwargs = {"total_steps": int(self.trainer.estimated_stepping_batches)} if _wants_total_steps(factory) else {}
        scheduler = factory(optimizer, **kwargs)
        if isinstance(scheduler, ReduceLROnPlateau):
            return {"scheduler": scheduler, "interval": "epoch", "monitor": "val/loss", "strict": False}
        return {"scheduler": scheduler, "interval": "step"}


def load_backbone_ckpt(backbone: nn.Module, name: str, path: str) -> None:
    """Load the `backbone.*` weights of a TransferModule checkpoint (weights only) into `backbone` (`name`)."""
    file, checkpoint = read_checkpoint(path, "model.backbone_ckpt")
    checkpoint = checkpoint if isinstance(checkpoint, dict) else {}
    if FROZEN_BASE in checkpoint:
        raise ValueError(f"model.backbone_ckpt: {file} {ADAPTER_ONLY}")
    weights = checkpoint.get("state_dict", checkpoint)
    state = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    if not state:
        raise ValueError(f"model.backbone_ckpt: {file} holds no backbone.* weights (is it a checkpoint of a run?)")
    source = checkpoint.get("hyper_parameters", {}).get("backbone")
    try:
        backbone.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"model.backbone_ckpt: {file} holds a {source or 'different'} backbone, model.backbone is {name}: "
            f"{str(error)[:300]}"
        ) from None


def _wants_total_steps(factory: Any) -> bool:
    """Whether a scheduler factory takes `total_steps` and leaves it unset (OneCycleLR, WarmupLR)."""
    keywords = getattr(factory, "keywords", {})  # jsonargparse gives a partial holding every init arg
    if "total_steps" in keywords:
        return keywords["total_steps"] is None
    try:
        return "total_steps" in inspect.signature(getattr(factory, "func", factory)).parameters
    except (TypeError, ValueError):
        return False


def label_map(trained: list[str] | None, tested: list[str] | None) -> Tensor | None:
    """Test label -> model label, for test data whose class names are some or all of those the model was
    trained on, in another order or another datamodule; None when the names are equal or either is unknown."""
    if trained is None or tested is None or list(trained) == list(tested):
        return None
    unknown = [name for name in tested if name not in trained]
    if unknown:
        raise ValueError(
            f"the test data's classes {unknown[:5]} are not among the {len(trained)} classes the model was trained on "
            f"({list(trained)[:5]}{' ...' if len(trained) > 5 else ''}): a test on other data needs its class names"
        )
    return torch.tensor([list(trained).index(name) for name in tested], dtype=torch.int64)
