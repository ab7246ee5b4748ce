"""Search files: a base config, a search space over config keys, the metric, the budget, like a study file.

    description: learning rates, batch size, warm-up and BatchNorm policy of the CIFAR-10 fine-tuning recipe
    config: ../configs/cifar10/fine_tuning.yaml       # the base config (files), as in a study
    overrides: {trainer.max_epochs: 3}               # config keys every trial gets
    space:
      model.init_args.optimizer.init_args.lr: {low: 1.0e-5, high: 1.0e-3, log: true}
      data.init_args.batch_size: {choices: [32, 64, 128]}
      model.init_args.bn_policy: {choices: [train, eval]}
      strategy:                                      # a named choice: sets of overrides (strategy, backbone)
        choices: {full: {}, lora: {config: ../configs/cifar10/lora.yaml}}
    metric: best_score          # what a trial returns: results.json's best validation score (default) or a
    direction: maximize         #   test metric; direction defaults to the metric's (loss, seconds: minimize)
    trials: 20                  # complete + pruned trials over every invocation and worker
    timeout: 3600               # optional: seconds of this invocation
    seeds: [0]                  # training seeds per trial (its value is their mean)
    final_seeds: [0, 1, 2]      # the best trial and the base config re-run over these at the end
    sampler: {name: tpe, seed: 0}
    pruner: {name: successive_halving, min_resource: 1, reduction_factor: 3}

A float range is `{low, high}` (`log: true` for a log scale, `step` for a grid); an int range the same with
integers; `choices` is a list of values or a mapping of names to overrides (`config` files and keys).
`grid` (a list) gives the values a full grid would try for a range (default: low, middle, high), for the
report's comparison of the search's compute with a grid's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.ablation.report import lower_is_better
from experiments.ablation.study import _config_files, _error, _overrides, fit_arguments, read_mapping

KEYS = ("description", "config", "overrides", "space", "metric", "direction", "trials", "timeout", "seeds",
        "final_seeds", "sampler", "pruner", "name")  # fmt: skip
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = {"successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
           "median": "MedianPruner", "none": "NopPruner"}  # fmt: skip


@dataclass(frozen=True)
class Parameter:
    """One dimension of the space: a float or int range, or categorical choices (values or named overrides)."""

    name: str
    kind: str  # "float", "int", "choice", "named"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    named: Mapping[str, tuple[tuple[Path, ...], tuple[tuple[str, Any], ...]]] | None = None
    grid: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            low, high = int(self.low or 0), int(self.high or 0)
            return trial.suggest_int(self.name, low, high, log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def overrides(self, value: Any) -> tuple[tuple[Path, ...], tuple[tuple[str, Any], ...]]:
        """The config files and keys a value of this parameter sets."""
        if self.kind == "named":
            assert self.named is not None
            return self.named[value]
        return (), ((self.name, value),)

    def checked_values(self) -> list[Any]:
        """The values the real parser checks before the search starts: every choice, a range's two ends."""
        if self.kind in ("choice", "named"):
            return list(self.choices)
        return [self.low, self.high] if self.kind == "float" else [int(self.low or 0), int(self.high or 0)]


@dataclass(frozen=True)
class Search:
    name: str
    path: Path
    description: str
    configs: tuple[Path, ...]
    overrides: tuple[tuple[str, Any], ...]
    space: tuple[Parameter, ...]
    metric: str
    direction: str
    trials: int | None
    timeout: float | None
    seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    sampler: dict[str, Any]
    pruner: dict[str, Any]

    def config_args(self, params: Mapping[str, Any], sets: tuple[tuple[str, Any], ...] = ()) -> list[str]:
        """`transfer fit` arguments of a point of the space: files first, then keys (base, point, `--set`)."""
        files, keys = list(self.configs), list(self.overrides)
        for parameter in self.space:
            if parameter.name in params:
                more_files, more_keys = parameter.overrides(params[parameter.name])
                files += more_files
                keys += more_keys
        keys += sets
        return fit_arguments(files, keys)

    def grid_size(self) -> int:
        return math.prod(len(p.grid) for p in self.space)


def _range(path: Path, name: str, spec: Mapping[str, Any]) -> Parameter:
    where = f"space.{name}"
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "grid"})
    if unknown:
        raise _error(path, where, f"unknown keys {unknown}; a range has low, high, log, step, grid")
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:  # type: ignore[operator]
        raise _error(path, where, f"expected numbers low < high, got low={low!r}, high={high!r}")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and low <= 0:  # type: ignore[operator]
        raise _error(path, where, f"a log scale needs low > 0, got {low}")
    if log and step is not None:
        raise _error(path, where, "`step` and `log: true` exclude each other (Optuna's rule)")
    kind = "int" if isinstance(low, int) and isinstance(high, int) and isinstance(step or 1, int) else "float"
    grid = spec.get("grid")
    if grid is None:
        middle = math.sqrt(low * high) if log else (low + high) / 2  # type: ignore[operator]
        grid = [low, int(round(middle)) if kind == "int" else middle, high]
    if not isinstance(grid, list) or not grid:
        raise _error(path, f"{where}.grid", f"expected a list of values, got {grid!r}")
    return Parameter(name, kind, float(low), float(high), log, step, grid=tuple(dict.fromkeys(grid)))  # type: ignore[arg-type]


def _parameter(path: Path, name: Any, spec: Any) -> Parameter:
    where = f"space.{name}"
    if not isinstance(name, str) or not name or name.startswith("-"):
        raise _error(path, "space", f"{name!r} is not a config key or a parameter name")
    if not isinstance(spec, Mapping):
        raise _error(path, where, f"expected {{low, high[, log, step]}} or {{choices: ...}}, got {spec!r}")
    if "choices" not in spec:
        return _range(path, name, spec)
    if set(spec) != {"choices"}:
        raise _error(path, where, f"`choices` takes no other keys, got {sorted(set(spec) - {'choices'})}")
    choices = spec["choices"]
    if isinstance(choices, Mapping) and choices:
        named = {str(label): _overrides(path, f"{where}.choices.{label}", value) for label, value in choices.items()}
        return Parameter(name, "named", named=named, choices=tuple(named), grid=tuple(named))
    if isinstance(choices, list) and choices and all(isinstance(c, str | int | float | bool) for c in choices):
        if "." not in name:
            raise _error(path, where, "a list of values needs a config key as its name (e.g. model.init_args.lr)")
        return Parameter(name, "choice", choices=tuple(choices), grid=tuple(choices))
    message = f"expected a list of values or a mapping of names to overrides, got {choices!r}"
    raise _error(path, f"{where}.choices", message)


def _seeds(path: Path, key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(type(s) is int and s >= 0 for s in value):
        raise _error(path, key, f"expected a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise _error(path, key, f"seeds repeat: {value}")
    return tuple(value)


def _named(path: Path, key: str, value: Any, known: tuple[str, ...] | Mapping[str, str], default: str) -> dict:
    spec = {"name": value} if isinstance(value, str) else dict(value or {"name": default})
    if spec.get("name", default) not in known:
        raise _error(path, f"{key}.name", f"expected one of {', '.join(known)}, got {spec.get('name')!r}")
    return {"name": default, **spec}


def load_search(path: Path) -> Search:
    """Parse and check a search file (the real parser checks its values later); errors name file and key."""
    path = Path(path)
    raw = read_mapping(path, "search", KEYS)
    space = raw.get("space")
    if not isinstance(space, Mapping) or not space:
        raise _error(path, "space", "expected a mapping of config keys (or names) to ranges or choices")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping) or "config" in overrides:
        raise _error(path, "overrides", "expected a mapping of config keys to values (files go in `config`)")
    metric = raw.get("metric", "best_score")
    if not isinstance(metric, str) or not metric:
        raise _error(path, "metric", f"expected a metric name such as best_score or test/acc, got {metric!r}")
    direction = raw.get("direction", "minimize" if lower_is_better(metric) else "maximize")
    if direction not in ("maximize", "minimize"):
        raise _error(path, "direction", f"expected maximize or minimize, got {direction!r}")
    trials, timeout = raw.get("trials"), raw.get("timeout")
    if trials is not None and (type(trials) is not int or trials < 1):
        raise _error(path, "trials", f"expected a number of trials >= 1, got {trials!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0):
        raise _error(path, "timeout", f"expected seconds > 0, got {timeout!r}")
    if trials is None and timeout is None:
        raise _error(path, "trials/timeout", "give the budget: a number of trials, a timeout in seconds, or both")
    seeds = _seeds(path, "seeds", raw.get("seeds", [0]))
    return Search(
        name=str(raw.get("name") or path.stem),
        path=path,
        description=str(raw.get("description") or "").strip(),
        configs=_config_files(path, "config", raw["config"]) if raw.get("config") else (),
        overrides=_overrides(path, "overrides", overrides)[1],
        space=tuple(_parameter(path, name, spec) for name, spec in space.items()),
        metric=metric,
        direction=direction,
        trials=trials,
        timeout=float(timeout) if timeout is not None else None,
        seeds=seeds,
        final_seeds=_seeds(path, "final_seeds", raw.get("final_seeds", list(seeds))),
        sampler=_named(path, "sampler", raw.get("sampler"), SAMPLERS, "tpe"),
        pruner=_named(path, "pruner", raw.get("pruner"), PRUNERS, "successive_halving"),
    )
