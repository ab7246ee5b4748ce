"""A multi-task loss weighting of your own: fixed weights per task, the baseline hand-tuned setups use.

A weighting is an `nn.Module` (learned weights are parameters: saved, averaged by DDP, trained by the
model's optimizer). `setup` gets the task names (and which are regressions) before training; `forward`
turns the losses of the tasks present in a step into the loss to minimise and the weights to log
(`train/<task>/weight`); `end_epoch` runs after each training epoch on every rank (DWA uses it)."""

import torch
from torch import Tensor

from lightning_modules.weighting import LossWeighting


class FixedWeights(LossWeighting):
    """Task t's loss times `weights[t]`.

    Args:
        weights: Task name -> weight, for every task.
    """

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.given = weights

    def setup(self, tasks: dict[str, bool]) -> None:
        super().setup(tasks)
        if set(self.given) != set(self.tasks):
            raise ValueError(f"model.weighting.weights must name the tasks {self.tasks}, got {sorted(self.given)}")

    def forward(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        weights = {task: torch.tensor(self.given[task]) for task in losses}
        return torch.stack([weights[task] * loss for task, loss in losses.items()]).sum(), weights


if __name__ == "__main__":
    from functools import partial

    from lightning import Trainer

    from datamodules import MultiTaskDataModule, RelabeledDataModule, SyntheticDataModule
    from lightning_modules import MultiTask, backbone_preprocessing

    images = partial(SyntheticDataModule, batch_size=8)  # 4 classes; "coarse" groups them into 2
    coarse = partial(
        RelabeledDataModule,
        source=partial(images, seed=1),
        groups={"low": ["class_0", "class_1"], "high": ["class_2", "class_3"]},
    )
    tasks = {"fine": images, "coarse": coarse}
    data = MultiTaskDataModule(tasks, preprocessing=backbone_preprocessing("tiny_cnn"))
    weighting = FixedWeights({"fine": 1.0, "coarse": 0.25})
    model = MultiTask(tasks=data.task_specs, weighting=weighting, backbone="tiny_cnn", pretrained=False)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    print({name: round(float(value), 3) for name, value in trainer.callback_metrics.items() if "weight" in name})
