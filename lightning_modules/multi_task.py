"""Multi-task learning: one shared backbone, one head per task, and a loss weighting passed in as an object.

Batches are `{task: batch}` from a `MultiTaskDataModule` (one task per step, or all of them). Each task's
batch goes through the backbone on its own (its own padding), then its head and its loss: cross-entropy,
or MSE for a regression task (`num_classes: 1`). The weighting (`lightning_modules.weighting`) makes one
update of the task losses; the gradient weightings (GradNorm, PCGrad) switch to manual optimization with
their own all-reduce under DDP.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import MeanMetric

from datamodules.multi_task import check_task_names
from lightning_modules.base import Batch, ParamGroup, TransferModule
from lightning_modules.finite import check_finite_losses
from lightning_modules.tasks import Task
from lightning_modules.weighting import Equal, GradientWeighting, LossWeighting

MultiBatch = dict[str, Batch]


class TaskSpec(TypedDict):
    """What the model needs to know of a task (`MultiTaskDataModule.task_specs`)."""

    num_classes: int
    metrics: list[str]
    val_names: list[str]


def _flat(grads: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([g.reshape(-1).float() for g in grads])


def _assign(params: list[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()


class MultiTask(TransferModule):
    """Several tasks learned together through one backbone (MT-DNN, Liu et al. 2019), a head per task.

    Logs `train/loss` (the weighted total), `train/<task>/loss` and `train/<task>/weight` per step, and per
    epoch `val/<task>/<metric>` (each task's official metrics, `_<set>` suffixed for several validation
    sets), `val/<task>/score`, `val/<task>/loss`, `val/loss` (all validation rows) and `val/score`, the
    macro average of the task scores: the value to monitor. `num_classes`, `metrics` and `val_names` of the
    base are unused: each task has its own, in `tasks`.

    Args:
        tasks: Task name -> `num_classes` (1: regression), `metrics`, `val_names`; linked by the CLI from
            the datamodule's `task_specs`.
        weighting: How the task losses make one update (`lightning_modules.weighting`); None: `Equal`.
    """

    def __init__(self, tasks: dict[str, TaskSpec] | None = None, weighting: LossWeighting | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if self.pair_head is not None:
            raise ValueError("model.pair_head: MultiTask takes sentence pairs as one input (a cross-encoder)")
        if not tasks:
            raise ValueError(
                "model.tasks is empty: MultiTask learns the tasks of a MultiTaskDataModule (data.tasks), whose "
                "task_specs the CLI links into model.tasks"
            )
        check_task_names(list(tasks), "model.tasks")
        if isinstance(self.hparams.get("weighting"), nn.Module):  # outside the CLI: keep checkpoints plain data
            self.hparams["weighting"] = f"{type(weighting).__module__}.{type(weighting).__qualname__}"
        smoothing, dropout = self.hparams["label_smoothing"], self.hparams["head_dropout"]
        self.tasks = {
            name: Task(s["num_classes"], tuple(s["metrics"] or ()) or None, smoothing) for name, s in tasks.items()
        }
        self.heads = nn.ModuleDict(
            {name: task.head(self.backbone.num_features, dropout) for name, task in self.tasks.items()}
        )
        self.weighting = weighting if weighting is not None else Equal()
        self.weighting.setup({name: task.regression for name, task in self.tasks.items()})
        self.automatic_optimization = not self.weighting.uses_gradients
        self.val_sets = [(task, name) for task, spec in tasks.items() for name in spec["val_names"] or [""]]
        self.train_task_metrics = nn.ModuleDict(
            {name: nn.ModuleList([task.new_metrics()]) for name, task in self.tasks.items()}
        )
        for stage in ("val", "test"):
            sets = {
                name: [task.new_metrics() for t, _ in self.val_sets if t == name] for name, task in self.tasks.items()
            }
            setattr(self, f"{stage}_task_metrics", nn.ModuleDict({t: nn.ModuleList(m) for t, m in sets.items()}))
        self.val_loss_mean = MeanMetric()
        self.test_loss_mean = MeanMetric()

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def init_task_modules(self) -> None:
        """One head and one set of metrics per task: built in `__init__`, once the tasks are known."""

    def setup(self, stage: str) -> None:
        datamodule: Any = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        if getattr(datamodule, "task_names", None) != self.task_names:
            raise ValueError(
                f"model MultiTask has tasks {self.task_names} but the data {type(datamodule).__name__} serves "
                f"{getattr(datamodule, 'task_names', 'no tasks')}: use a MultiTaskDataModule with the same tasks"
            )
        if self.weighting.uses_gradients and getattr(datamodule, "sampling", "all") != "all":
            raise ValueError(
                f"model.weighting {type(self.weighting).__name__} compares the tasks' gradients within each step: "
                f"it needs every task at every step, data.sampling=all (got {datamodule.sampling})"
            )

    # ------------------------------------------------------------------------------------ forward

    def inference_heads(self) -> dict[str, nn.Module]:
        return dict(self.heads)

    def task_logits(self, batch: Batch, task: str) -> Tensor:
        return self.heads[task](self.features(batch))

    def forward(self, batch: MultiBatch) -> dict[str, Tensor]:  # type: ignore[override]
        return {task: self.task_logits(part, task) for task, part in batch.items()}

    def compute_loss(self, batch: MultiBatch, stage: str) -> dict[str, Tensor]:  # type: ignore[override]
        """`loss` (training: the weighting's total; evaluation: the task's loss), and per task
        `<task>/loss`, `<task>/logits` and, in training, `<task>/weight`."""
        out: dict[str, Tensor] = {}
        losses = {}
        for task, part in batch.items():
            logits = self.task_logits(part, task)
            losses[task] = self.tasks[task].loss(logits, part["labels"])
            out[f"{task}/logits"], out[f"{task}/loss"] = logits, losses[task]
        if stage == "train":
            out["loss"], weights = self.weighting(losses)
            out |= {f"{task}/weight": weight for task, weight in weights.items()}
        else:
            out["loss"] = torch.stack(list(losses.values())).sum()
        return out

    # ------------------------------------------------------------------------------------- steps

    def _record(self, batch: MultiBatch, out: dict[str, Tensor], stage: str, dataloader_idx: int = 0) -> None:
        """Log the losses (and weights) and update each task's metrics."""
        train = stage == "train"
        for task, part in batch.items():
            index, suffix = 0, ""
            if not train:
                expected, name = self.val_sets[dataloader_idx]
                if task != expected:
                    raise ValueError(f"{stage} loader {dataloader_idx} should serve task {expected}, served {task}")
                index = [n for t, n in self.val_sets if t == task].index(name)
                suffix = f"_{name}" if name else ""
            size = len(part["labels"])
            for metric in ("loss", "weight"):
                value = out.get(f"{task}/{metric}")
                if value is None:
                    continue
                if train:
                    self.log_step_value(f"train/{task}/{metric}", value, size)
                else:
                    self.log(
                        f"{stage}/{task}/{metric}{suffix}",
                        value,
                        batch_size=size,
                        sync_dist=True,
                        add_dataloader_idx=False,
                    )
            getattr(self, f"{stage}_task_metrics")[task][index].update(out[f"{task}/logits"], part["labels"])
            if not train:
                getattr(self, f"{stage}_loss_mean").update(out[f"{task}/loss"].detach().float(), weight=size)
        if train:
            size = sum(len(part["labels"]) for part in batch.values())
            self.log_step_value("train/loss", out["loss"], size, prog_bar=True)

    def training_step(self, batch: MultiBatch, batch_idx: int) -> Tensor | None:  # type: ignore[override]
        out = self.compute_loss(batch, "train")
        check_finite_losses(out, self.global_step, self.current_epoch, batch_idx)
        self._record(batch, out, "train")
        if self.automatic_optimization:
            return out["loss"]
        self._gradient_step({task: out[f"{task}/loss"] for task in batch}, out["loss"])
        return None

    def validation_step(self, batch: MultiBatch, batch_idx: int, dataloader_idx: int = 0) -> None:  # type: ignore[override]
        self._record(batch, self.compute_loss(batch, "val"), "val", dataloader_idx)

    def test_step(self, batch: MultiBatch, batch_idx: int, dataloader_idx: int = 0) -> None:  # type: ignore[override]
        self._record(batch, self.compute_loss(batch, "test"), "test", dataloader_idx)

    def on_test_start(self) -> None:
        """Each task tests on its own sets (`val_sets`); corrupted test sets are not offered per task."""

    def predict_step(self, batch: MultiBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:  # type: ignore[override]
        return {task: self.tasks[task].predict(outputs) for task, outputs in self(batch).items()}

    def on_train_epoch_end(self) -> None:
        self.weighting.end_epoch()
        self._log_metrics("train")

    def _log_metrics(self, stage: str) -> None:
        """Each task's metrics (`{stage}/<task>/<metric>[_<set>]`), its score (mean over its sets) and
        `{stage}/score`, the mean over tasks; tasks without rows this epoch are left out."""
        scores = []
        for task, per_set in getattr(self, f"{stage}_task_metrics").items():
            names = [""] if stage == "train" else [n for t, n in self.val_sets if t == task]
            task_scores = []
            for name, metrics in zip(names, per_set, strict=True):
                if not metrics.updated:
                    continue
                suffix = f"_{name}" if name else ""
                values = metrics.compute()
                for metric, value in values.items():
                    if metric != "score" or suffix:
                        self.log(f"{stage}/{task}/{metric}{suffix}", value)
                task_scores.append(values["score"])
                metrics.reset()
            if task_scores:
                scores.append(torch.stack(task_scores).mean())
                self.log(f"{stage}/{task}/score", scores[-1])
        if scores:
            self.log(f"{stage}/score", torch.stack(scores).mean(), prog_bar=stage == "val")
        loss_mean = getattr(self, f"{stage}_loss_mean", None)
        if loss_mean is not None and loss_mean.update_called:
            self.log(f"{stage}/loss", loss_mean.compute())
            loss_mean.reset()

    # ------------------------------------------------------------------------------- optimization

    def param_groups(self) -> list[ParamGroup]:
        groups: list[ParamGroup] = [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "heads", "params": list(self.heads.parameters())},
        ]
        own = list(self.weighting.parameters())
        if own:  # learned task weights: no weight decay (it would pull them toward 0), a rate of their own
            group: ParamGroup = {"name": "weighting", "params": own, "weight_decay": 0.0}
            if self.weighting.lr is not None:
                group["lr"] = self.weighting.lr
            groups.append(group)
        return groups

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        manual = not self.automatic_optimization
        if manual and isinstance(config, dict) and isinstance(config["lr_scheduler"]["scheduler"], ReduceLROnPlateau):
            raise ValueError(
                f"model.weighting {type(self.weighting).__name__} optimizes manually and steps schedulers per "
                "step: ReduceLROnPlateau is not supported with it; use e.g. lightning_modules.schedulers.WarmupLR"
            )
        return config

    def _gradient_step(self, losses: dict[str, Tensor], total: Tensor) -> None:
        """Manual step of a gradient weighting: per-task gradients of the shared parameters, the weighted
        total's gradient of the others, one all-reduce (mean over ranks) of all of it and the losses, the
        weighting's combination on values identical on every rank, then the optimizer and scheduler."""
        weighting = cast(GradientWeighting, self.weighting)
        optimizer = cast(Any, self.optimizers())
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        shared = weighting.shared_parameters(self.backbone)
        replaced = {id(p) for p in shared} if weighting.replaces_shared_gradient else set()
        others = [p for p in params if id(p) not in replaced]
        tasks = list(losses)
        # 16-mixed: gradients of the scaled losses (no underflow), unscaled here, rescaled for the scaler's step
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        task_grads = torch.stack(
            [
                _flat(torch.autograd.grad(losses[t] * scale, shared, retain_graph=True, materialize_grads=True))
                for t in tasks
            ]
        )
        other_grads = _flat(torch.autograd.grad(total * scale, others, materialize_grads=True)) if others else None
        parts = [torch.stack([losses[t].detach().float() for t in tasks]), task_grads.flatten() / scale]
        parts += [other_grads / scale] if other_grads is not None else []
        synced = self.trainer.strategy.reduce(torch.cat(parts), reduce_op="mean")
        k, size = len(tasks), task_grads.shape[1]
        values, task_grads = synced[:k], synced[k : k + k * size].view(k, size)
        _assign(others, synced[k + k * size :])
        shared_grad = weighting.combine(task_grads, values, self.global_step)
        if shared_grad is not None:
            _assign(shared, shared_grad)
        if scaler is not None:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(scale)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        weighting.after_step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            cast(Any, scheduler).step()
