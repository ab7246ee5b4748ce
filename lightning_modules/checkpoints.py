"""Reading a checkpoint of one of our runs, given by a config key (`ckpt_path`, `model.backbone_ckpt`,
`model.teacher_ckpt`): weights only, hyper_parameters that name code refused, config differences listed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path: str, key: str) -> tuple[Path, Any]:
    """The file and its contents, loaded with `weights_only=True` on the CPU; errors name `key` and the path."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist")
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{key}: cannot read {file}: {error}") from error


# What LightningCLI's checkpoints may name as their instantiator: Lightning's own, nothing else.
TRUSTED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)
# Model arguments the CLI sets from the data at instantiate time (argument -> the datamodule attribute it
# comes from): their parsed values are placeholders, not choices.
LINKED_FROM_DATA = {"num_classes": "num_classes", "metrics": "metrics", "val_names": "val_names", "tasks": "task_specs"}
# Model arguments a run records for itself (not choices either): the training data's class names and inputs.
RECORDED = ("class_names", "inputs")


def imported_subclass(class_path: object, base: type) -> bool:
    """Whether `class_path` names a subclass of `base` that is already imported: reads `sys.modules`, so
    checking a checkpoint's `_class_path` never imports (runs) a module the checkpoint chose."""
    if not isinstance(class_path, str):
        return False
    module, _, name = class_path.rpartition(".")
    target = getattr(sys.modules.get(module), name, None)
    return isinstance(target, type) and issubclass(target, base)


def check_hyperparameters(hparams: dict[str, Any], file: Path, base: type) -> None:
    """Refuse a checkpoint whose hyper_parameters name code to run: an instantiator other than Lightning's, or a
    class that is not an imported `base` subclass. Errors name the file and the value."""
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in TRUSTED_INSTANTIATORS:
        raise ValueError(
            f"ckpt_path: {file} names the instantiator {instantiator!r} in its hyper_parameters; only "
            f"{', '.join(TRUSTED_INSTANTIATORS)} is trusted, so it was not imported"
        )
    import lightning_modules

    lightning_modules.import_all()  # every strategy of ours is trusted, whichever the caller happened to import
    class_path = hparams.get("_class_path")
    if class_path is not None and not imported_subclass(class_path, base):
        raise ValueError(
            f"ckpt_path: {file} names the class {class_path!r} in its hyper_parameters, which is not one of the "
            f"imported {base.__name__} strategies; it was not imported (a checkpoint must not choose code to run)"
        )
    for key, nested in _class_paths(hparams):  # e.g. a weighting's class_path, which jsonargparse would import
        if not imported_subclass(nested, object):
            raise ValueError(
                f"ckpt_path: {file} names the class {nested!r} at {key} in its hyper_parameters, which is not an "
                "imported class; it was not imported (a checkpoint must not choose code to run)"
            )


def _class_paths(value: Any, where: str = "hyper_parameters") -> list[tuple[str, Any]]:
    """(where, value) of every nested `class_path` entry."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "class_path":
                found.append((where, item))
            found += _class_paths(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += _class_paths(item, f"{where}[{index}]")
    return found


def _plain(value: Any) -> Any:
    """Config values as plain data, comparable with what a checkpoint stores."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


MISSING = "<not set>"


def config_differences(model: Any, hparams: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """`(key, config value, checkpoint value)` for each model setting the checkpoint holds and the parsed
    config gives differently; `model` is the parsed `model` (class_path + init_args, or plain arguments)."""
    model = _plain(model) or {}
    init_args = model.get("init_args", model) if "class_path" in model else model
    differences: list[tuple[str, Any, Any]] = []
    stored_class = hparams.get("_class_path")
    if stored_class is not None and model.get("class_path") not in (None, stored_class):
        differences.append(("model.class_path", model["class_path"], stored_class))
    prefix = "model.init_args." if "class_path" in model else "model."
    for key, stored in hparams.items():
        if key.startswith("_") or key in LINKED_FROM_DATA or key in RECORDED:
            continue
        given = init_args.get(key, MISSING)
        if _plain(stored) != given:
            differences.append((prefix + key, given, _plain(stored)))
    return differences
