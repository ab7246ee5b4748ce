"""Checks of an instantiated `transfer fit` (a LightningCLI built with run=False) that the config and the shipped
study tests share: its monitors name metrics the model really logs; stand-in teachers for distillation."""

from pathlib import Path

import torch
import yaml
from support import GLUE_FIXTURES

from datamodules.glue import GLUE_TASKS
from lightning_modules import TransferModule, create_backbone


def logged_val_metrics(model) -> set[str]:
    """Names the model logs for validation: `val/<metric>[_<set>]`, `val/score`, `val/loss[_<set>]`."""
    suffixes = [f"_{name}" if name else "" for name in model.val_names]
    metrics = [*model.val_metrics[0].metrics.keys(), "score", "loss"]
    names = {f"val/{metric}{s}" for metric in metrics for s in suffixes}
    return names | {"val/score"}


def stand_in_teacher(config: Path, tmp: Path) -> list[str]:
    """Distillation configs name a teacher a fresh checkout lacks: random weights of the right shape."""
    experiment = yaml.safe_load(config.read_text())
    model = experiment["model"]
    if isinstance(model, str):  # a model piece
        model = yaml.safe_load((config.parent / model).read_text())
    init = model["init_args"]
    if init.get("teacher"):  # a registry backbone: its weights file
        path = tmp / "teacher.pt"
        torch.save(create_backbone(init["teacher"], pretrained=False).state_dict(), path)
        return ["--model.init_args.teacher_weights", str(path)]
    labels = GLUE_TASKS[experiment["data"]["init_args"]["task"]].labels  # a run's checkpoint of this task
    teacher = TransferModule(backbone=init["backbone"], pretrained=False, num_classes=len(labels or [0]))
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, tmp / "t.ckpt")
    return ["--model.init_args.teacher_ckpt", str(tmp / "t.ckpt")]


def check_multi_task(cli) -> None:
    specs = cli.datamodule.task_specs
    assert cli.model.task_names == list(specs) and len(specs) >= 2
    for task, member in cli.datamodule.members.items():
        assert cli.model.heads[task].out_features == specs[task]["num_classes"] == member.num_classes
        assert member.preprocessing == cli.datamodule.preprocessing  # the backbone's, through the multi-task data
        if hasattr(member, "task"):  # GLUE: the task it names, from the folder given once as data.root
            assert member.task == task and member.root == GLUE_FIXTURES
    names = {f"val/{task}/{metric}{f'_{name}' if name else ''}" for task, spec in specs.items()
             for metric in [*spec["metrics"], "score", "loss"] for name in spec["val_names"]}  # fmt: skip
    names |= {f"val/{task}/score" for task in specs} | {"val/score", "val/loss"}
    assert monitors(cli) <= names


def check_monitors(cli) -> None:
    """The checkpoint's and early stopping's monitors are among the metrics the model logs for validation."""
    if hasattr(cli.datamodule, "task_specs"):  # multi-task: each task's classes and metrics, linked
        check_multi_task(cli)
        return
    logged = logged_val_metrics(cli.model)
    assert monitors(cli) <= logged, f"{monitors(cli)} not among {sorted(logged)}"


def monitors(cli) -> set[str]:
    """What the checkpoint and early stopping (unless switched off) monitor."""
    stopping = cli.trainer.early_stopping_callback
    return {cli.trainer.checkpoint_callback.monitor} | ({stopping.monitor} if stopping is not None else set())
