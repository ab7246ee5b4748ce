"""Reading a checkpoint of one of our runs, given by a config key (`ckpt_path`, `model.backbone_ckpt`,
`model.teacher_ckpt`): weights only, hyper_parameters that name code refused, config differences listed."""

from __future__ import annotations

import collections.abc
import enum
import inspect
import sys
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import torch


def read_checkpoint(path: str, key: str) -> tuple[Path, Any]:
    """The file and its contents, loaded with `weights_only=True` on the CPU; errors name `key` and the path."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{key}: {path} does not exist")
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        with open(file, "rb") as handle:
            head = handle.read(4)
        if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
            raise ValueError(f"{key}: {file} is not a PyTorch checkpoint (it starts with {head!r})") from None
        raise ValueError(f"{key}: cannot read {file}: {error}") from error


# What LightningCLI's checkpoints may name as their instantiator: Lightning's own, nothing else.
TRUSTED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)
# Model arguments the CLI sets from the data at instantiate time (argument -> the datamodule attribute it
# comes from): their parsed values are placeholders, not choices.
LINKED_FROM_DATA = {"num_classes": "num_classes", "metrics": "metrics", "val_names": "val_names", "tasks": "task_specs"}
# Model arguments a run records for itself (not choices either): the training data's class names and inputs.
RECORDED = ("class_names", "inputs")


# The packages a checkpoint's hyper_parameters may name classes from (strategies, optimizers and schedulers, adapter
# configs, weightings); the class must be imported already: checking never imports (runs) a module.
TRUSTED_PACKAGES = ("lightning_modules", "torch", "peft", "lightning")
# Annotations under which jsonargparse keeps a string a string; any other type may import what a string names.
PLAIN_TYPES = (str, int, float, bool, bytes, type(None), Path, list, tuple, dict, set, frozenset)


def imported_class(class_path: object, base: type = object, chosen: frozenset[str] = frozenset()) -> type | None:
    """The subclass of `base` that `class_path` names, if its module is already imported and in a trusted package
    or the class is one the user's own config `chosen` names (a strategy or weighting of their own): reads
    `sys.modules`, so checking a checkpoint never imports (runs) a module the checkpoint chose."""
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    if module.split(".")[0] not in TRUSTED_PACKAGES and class_path not in chosen:
        return None
    target = getattr(sys.modules.get(module), name, None)
    return target if isinstance(target, type) and issubclass(target, base) else None


def check_hyperparameters(
    hparams: dict[str, Any], file: Path, base: type, chosen: frozenset[str] = frozenset()
) -> None:
    """Refuse a checkpoint whose hyper_parameters could make jsonargparse import and call code: an instantiator
    other than Lightning's, a strategy that is not an imported `base` subclass, a nested `class_path` that is not an
    imported class of a trusted package, or a string where the argument's type admits a callable or a class (a
    scheduler's `lr_lambda: os._exit`). Only plain values pass, and classes of this project's packages or of the
    user's own config (`chosen`, the class paths it names). Errors name the file, the key and the value."""
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in TRUSTED_INSTANTIATORS:
        raise ValueError(
            f"ckpt_path: {file} names the instantiator {instantiator!r} in its hyper_parameters; only "
            f"{', '.join(TRUSTED_INSTANTIATORS)} is trusted, so it was not imported"
        )
    import lightning_modules

    lightning_modules.import_all()  # every strategy of ours is trusted, whichever the caller happened to import
    class_path = hparams.get("_class_path")
    strategy = imported_class(class_path, base, chosen) if class_path is not None else base
    if strategy is None:
        raise ValueError(
            f"ckpt_path: {file} names the class {class_path!r} in its hyper_parameters, which is not one of the "
            f"imported {base.__name__} strategies; it was not imported (a checkpoint must not choose code to run)"
        )
    arguments = {k: v for k, v in hparams.items() if not k.startswith("_")}
    for key, value in _argument_references(arguments, _argument_types(strategy), "hyper_parameters", chosen):
        raise ValueError(
            f"ckpt_path: {file} names {value!r} at {key}, where a class or a function would "
            "be imported; it was not imported (a checkpoint must not choose code to run)"
        )


def _argument_types(cls: type) -> dict[str, Any]:
    """The annotation of each argument of `cls.__init__` and of the `__init__`s it passes `**kwargs` on to (an
    argument without one: `None`, which counts as unknown)."""
    types: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        try:
            signature = inspect.signature(init, eval_str=True)
            fields: dict[str, Any] = {}
        except Exception:  # e.g. a dataclass's generated __init__ (peft's configs): its fields' annotations instead
            signature = inspect.signature(init)
            try:
                fields = typing.get_type_hints(klass)
            except Exception:
                fields = {}
        for name, parameter in signature.parameters.items():
            annotation = None if parameter.annotation is parameter.empty else parameter.annotation
            types[name] = fields.get(name) if isinstance(annotation, str) else annotation
    return types


def _admits_code(annotation: Any) -> bool:
    """Whether jsonargparse may import what a string names under `annotation`: a callable, a class, or unknown."""
    if annotation is Any or isinstance(annotation, TypeVar):
        return False
    origin = get_origin(annotation)
    if origin is Literal:
        return False
    if origin is not None:  # a union, list[...], dict[...], Callable[...], type[...]
        return origin in (type, collections.abc.Callable) or any(_admits_code(a) for a in get_args(annotation))
    if isinstance(annotation, type):
        return not issubclass(annotation, PLAIN_TYPES + (enum.Enum,))
    return True  # None (no annotation) or a typing construct we do not know: assume the worst


def _code_references(value: Any, annotation: Any, where: str, chosen: frozenset[str]) -> list[tuple[str, Any]]:
    """(where, value) of each value in `value` that names code: a `class_path` this check cannot vouch for, or a
    string where `annotation` (passed down to the items of lists and dicts) admits a callable or a class."""
    if isinstance(value, dict) and "class_path" in value:
        cls = imported_class(value["class_path"], chosen=chosen)
        if cls is None:
            return [(f"{where}.class_path", value["class_path"])]
        return _argument_references(value.get("init_args") or {}, _argument_types(cls), f"{where}.init_args", chosen)
    if isinstance(value, str):
        return [(where, value)] if _admits_code(annotation) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else []
    return [found for key, item in items for found in _code_references(item, annotation, f"{where}[{key!r}]", chosen)]


def _argument_references(
    arguments: dict[str, Any], types: dict[str, Any], where: str, chosen: frozenset[str]
) -> list[tuple[str, Any]]:
    """`_code_references` of a class's arguments, each under its own annotation (unknown when it has none)."""
    return [
        found
        for key, item in arguments.items()
        for found in _code_references(item, types.get(key), f"{where}.{key}", chosen)
    ]


def class_paths(config: Any) -> frozenset[str]:
    """Every `class_path` a parsed config (or part of one) names: the classes its user chose."""
    config = _plain(config)
    found = {config["class_path"]} if isinstance(config, dict) and isinstance(config.get("class_path"), str) else set()
    items = config.values() if isinstance(config, dict) else config if isinstance(config, list) else []
    return frozenset(found.union(*(class_paths(item) for item in items)))


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
