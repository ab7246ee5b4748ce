"""A study file and its expansion into arms. Reads the YAML file and nothing else.

```yaml
description: what the study asks              # optional; `name` defaults to the file's stem
config: ../configs/cifar10/fine_tuning.yaml   # file(s) every run stacks on defaults.yaml (relative to this file)
overrides:                                    # config keys every run sets, as on the command line
  data.init_args.train_per_class: 100
axes:                                         # crossed with each other, in this order
  model.init_args.temperature: [1, 2, 4, 8]   # a config key and its values, or
  strategy:                                   # named arms, each a set of overrides (`config`: files)
    fine_tuning: {}
    feature_extraction: {config: ../configs/glue/feature_extraction.yaml}
    multi_task: {config: ../configs/glue/multitask_small.yaml, covers: task}  # see below
arms:                                         # named arms outside the grid (or the only axis)
  no_kd: {model.init_args.alpha: 0.0}
seeds: [0, 1, 2]
metrics: [test/acc]                           # read from each run's results.json; the first is primary
baseline: no_kd                               # an arm, a label of one axis, or {axis: label}
curves: [val/acc]                             # optional; default: val/loss and the checkpoint monitor
weight_space:                                 # optional: arms made from other arms' checkpoints, seed by seed
  wise_ft: {wise_ft: [probe, lp_ft], alphas: [0, 0.5, 1]}   # `transfer wise-ft` from the first to the second
  greedy_soup: {greedy_soup: [no_kd, lp_ft]}  # `transfer soup` (also `uniform_soup`); optional `metric`
```

`covers: <axis>` makes one run serve every value of another axis: a multi-task run trains all the tasks
at once. The arm ignores that axis's files and keys (so its arms, one per task, share their runs) and
reads each metric for its task: `test/score` of arm `rte,multi_task` is the run's `test/rte/score`.

`weight_space` arms (`experiments.ablation.weight_space`) run after the runs of their source arms: WiSE-FT
between two arms' checkpoints, or a soup of several arms' checkpoints, of the same seed, each evaluated
with the last source arm's config and reported as the mix chosen on validation.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KEYS = (
    "name", "description", "config", "overrides", "axes", "arms", "seeds", "metrics", "baseline", "curves",
    "weight_space",
)  # fmt: skip
WEIGHT_SPACE = {"wise_ft": "wise-ft", "greedy_soup": "soup", "uniform_soup": "soup"}  # kind -> `transfer` command
ARM_AXIS = "arm"  # the axis of the top-level `arms`


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the key."""


def cli_value(value: Any) -> str:
    """A YAML value as the command line takes it (jsonargparse reads each value as YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def fit_arguments(files: Sequence[Path], keys: Sequence[tuple[str, Any]]) -> list[str]:
    """`transfer fit` arguments: every `-c` file first, then the keys (so a key always wins over a file)."""
    args = [arg for path in files for arg in ("-c", str(path))]
    return args + [arg for key, value in keys for arg in (f"--{key}", cli_value(value))]


@dataclass(frozen=True)
class Choice:
    """One value of one axis: the config files it stacks and the keys it sets."""

    axis: str
    label: str
    configs: tuple[Path, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    covers: str | None = None  # an axis whose values this choice's one run serves (multi-task)


@dataclass(frozen=True)
class Arm:
    name: str
    choices: tuple[Choice, ...]

    @property
    def covered(self) -> set[str]:
        return {choice.covers for choice in self.choices if choice.covers}

    @property
    def own_choices(self) -> tuple[Choice, ...]:
        """The choices that shape the arm's runs: all but those of an axis another choice covers."""
        return tuple(choice for choice in self.choices if choice.axis not in self.covered)

    @property
    def labels(self) -> list[str]:
        """One tag per axis value of its runs (W&B tags)."""
        return [choice.label for choice in self.own_choices]

    @property
    def run_name(self) -> str:
        """What its runs are (W&B job type): the arm's name, less the values its runs cover."""
        return ",".join(self.labels) if self.covered else self.name

    @property
    def assignment(self) -> dict[str, str]:
        return {choice.axis: choice.label for choice in self.choices}

    def metric_key(self, metric: str) -> str:
        """Where its runs hold `metric`: `test/score` -> `test/rte/score` when they cover task `rte`."""
        stage, slash, name = metric.partition("/")
        if not slash:
            return metric  # fit_seconds and the like: the whole run's
        return "/".join([stage, *(self.assignment[axis] for axis in sorted(self.covered)), name])


@dataclass(frozen=True)
class WeightSpaceArm:
    """An arm made in weight space from the checkpoints of `sources` (arm names) of each seed."""

    name: str
    kind: str  # a key of WEIGHT_SPACE
    sources: tuple[str, ...]
    alphas: tuple[float, ...] = ()  # wise_ft: the mixing coefficients (empty: the command's)
    metric: str = "val/score"  # the validation metric that chooses

    @property
    def arm(self) -> Arm:
        return Arm(self.name, (Choice(ARM_AXIS, self.name),))


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    description: str
    configs: tuple[Path, ...]
    overrides: tuple[tuple[str, Any], ...]
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    metrics: tuple[str, ...]
    baseline: str | dict[str, str] | None
    curves: tuple[str, ...]
    weight_space: tuple[WeightSpaceArm, ...] = ()

    def arm(self, name: str) -> Arm:
        for arm in (*self.arms, *(made.arm for made in self.weight_space)):
            if arm.name == name:
                return arm
        raise KeyError(name)

    def config_args(self, arm: Arm, configs: Sequence[Path] = (), sets: Sequence[tuple[str, Any]] = ()) -> list[str]:
        """The arm's `transfer fit` arguments: every `-c` file first (study, arm, command line), then the
        keys (study, arm, `--set`), so a key always wins over a file and the command line wins last."""
        return fit_arguments(*self.files_and_keys(arm, configs, sets))

    def files_and_keys(
        self, arm: Arm, configs: Sequence[Path] = (), sets: Sequence[tuple[str, Any]] = ()
    ) -> tuple[list[Path], list[tuple[str, Any]]]:
        """The arm's config files and keys, in the order `config_args` gives them."""
        own = arm.own_choices
        files = [*self.configs, *(path for choice in own for path in choice.configs), *configs]
        keys = [*self.overrides, *(item for choice in own for item in choice.overrides), *sets]
        return files, keys

    def comparison_group(self, arm: Arm) -> tuple[tuple[str, str], ...]:
        """Arms compared with one another: all of them, or with a per-axis baseline (`{strategy: ft}`)
        those that agree on the other axes (the same task)."""
        if not isinstance(self.baseline, dict):
            return ()
        if not set(self.baseline) <= set(arm.assignment):
            return (("arm", arm.name),)
        return tuple((axis, label) for axis, label in arm.assignment.items() if axis not in self.baseline)

    def baseline_of(self, arm: Arm) -> Arm | None:
        """The arm `arm` is compared with (None for a baseline itself, or when none applies)."""
        if self.baseline is None:
            return None
        if isinstance(self.baseline, str):
            return None if arm.name == self.baseline else self.arm(self.baseline)
        if not set(self.baseline) <= set(arm.assignment):
            return None  # an arm outside the grid has none of the grid's axes
        wanted = {**arm.assignment, **self.baseline}
        if wanted == arm.assignment:
            return None
        return next((other for other in self.arms if other.assignment == wanted), None)


def _error(path: Path, where: str, message: str) -> StudyError:
    return StudyError(f"{path}: {where}: {message}")


def _config_files(path: Path, where: str, value: Any) -> tuple[Path, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _error(path, where, f"expected a config file or a list of them, got {value!r}")
    files = []
    for item in values:
        file = Path(item).expanduser()
        file = file if file.is_absolute() else (path.parent / file).resolve()
        if not file.is_file():
            raise _error(path, where, f"config file {item} not found (looked at {file})")
        files.append(file)
    return tuple(files)


def _overrides(path: Path, where: str, value: Any) -> tuple[tuple[Path, ...], tuple[tuple[str, Any], ...]]:
    """An arm's mapping: `config` (files) and config keys with their values."""
    if value is None:
        return (), ()
    if not isinstance(value, Mapping):
        raise _error(path, where, f"expected a mapping of config keys to values, got {value!r}")
    configs = _config_files(path, f"{where}.config", value["config"]) if "config" in value else ()
    for key in value:
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise _error(path, where, f"{key!r} is not a config key (write keys as `model.init_args.lr`)")
    return configs, tuple((key, v) for key, v in value.items() if key != "config")


def _short_labels(keys: list[str]) -> dict[str, str]:
    """`model.init_args.temperature` -> `temperature`, longer where two keys would share a name."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            if sum(other.split(".")[-n:] == parts[-n:] for other in keys) == 1:
                break
        short[key] = ".".join(parts[-n:])
    return short


def _named_choices(path: Path, where: str, axis: str, value: Any) -> list[Choice]:
    if not isinstance(value, Mapping) or not value:
        raise _error(path, where, "expected named arms: a mapping of arm names to overrides")
    choices = []
    for label, overrides in value.items():
        if not isinstance(label, str) or not label.strip():
            raise _error(path, where, f"an arm name must be a non-empty string, got {label!r}")
        covers = None
        if isinstance(overrides, Mapping) and "covers" in overrides:
            overrides = dict(overrides)
            covers = overrides.pop("covers")
        configs, keys = _overrides(path, f"{where}.{label}", overrides)
        choices.append(Choice(axis, label, configs, keys, covers))
    return choices


def _check_covers(path: Path, grid: list[list[Choice]], arms: list[Choice]) -> None:
    axes = {choices[0].axis for choices in grid}
    covering = {choice.axis for choices in grid for choice in choices if choice.covers}
    for choice in arms:
        if choice.covers is not None:
            raise _error(path, f"arms.{choice.label}.covers", "only an axis value can cover another axis")
    for choice in (choice for choices in grid for choice in choices if choice.covers is not None):
        where = f"axes.{choice.axis}.{choice.label}.covers"
        if choice.covers not in axes - {choice.axis}:
            raise _error(path, where, f"{choice.covers!r} is not another axis ({', '.join(sorted(axes))})")
        if choice.covers in covering:
            raise _error(path, where, f"axis {choice.covers!r} has values that cover an axis themselves")


def _axes(path: Path, axes: Any) -> list[list[Choice]]:
    if not isinstance(axes, Mapping):
        raise _error(path, "axes", f"expected a mapping, got {axes!r}")
    short = _short_labels([key for key, values in axes.items() if isinstance(values, list)])
    grid = []
    for axis, values in axes.items():
        if isinstance(values, list):
            if not values:
                raise _error(path, f"axes.{axis}", "needs at least one value")
            labels = [f"{short[axis]}={cli_value(v)}" for v in values]
            if len(set(labels)) != len(labels):
                raise _error(path, f"axes.{axis}", f"values repeat: {values}")
            grid.append([Choice(axis, label, (), ((axis, v),)) for label, v in zip(labels, values, strict=True)])
        else:
            grid.append(_named_choices(path, f"axes.{axis}", axis, values))
    return grid


def _baseline(path: Path, value: Any, arms: tuple[Arm, ...]) -> str | dict[str, str] | None:
    if value is None:
        return None
    names = [arm.name for arm in arms]
    labels: dict[str, set[str]] = {}
    for arm in arms:
        for choice in arm.choices:
            labels.setdefault(choice.axis, set()).add(choice.label)
    if isinstance(value, str):
        if value in names:
            return value
        axes = [axis for axis, known in labels.items() if value in known]
        if len(axes) == 1:
            return {axes[0]: value}
        raise _error(path, "baseline", f"{value!r} is neither an arm ({', '.join(names)}) nor a label of one axis")
    if not isinstance(value, Mapping):
        raise _error(path, "baseline", f"expected an arm name or a mapping axis -> value, got {value!r}")
    partial = {}
    for axis, wanted in value.items():
        if axis not in labels:
            raise _error(path, f"baseline.{axis}", f"not an axis (axes: {', '.join(labels)})")
        matches = [label for label in labels[axis] if label == wanted or label.endswith(f"={cli_value(wanted)}")]
        if len(matches) != 1:
            raise _error(path, f"baseline.{axis}", f"{wanted!r} is not one of {sorted(labels[axis])}")
        partial[axis] = matches[0]
    return partial


def _weight_space(path: Path, value: Any, arms: Sequence[Arm]) -> tuple[WeightSpaceArm, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _error(path, "weight_space", f"expected a mapping of arm names to their recipe, got {value!r}")
    names = {arm.name for arm in arms}
    result = []
    for name, spec in value.items():
        where = f"weight_space.{name}"
        if name in names:
            raise _error(path, where, "an arm of that name exists already")
        kinds = [kind for kind in WEIGHT_SPACE if isinstance(spec, Mapping) and kind in spec]
        if len(kinds) != 1 or not set(spec) <= {kinds[0], "alphas", "metric"}:
            raise _error(path, where, f"expected one of {', '.join(WEIGHT_SPACE)} (a list of arms), with "
                                      f"`alphas` (wise_ft) and `metric` if wanted; got {spec!r}")  # fmt: skip
        kind, sources = kinds[0], spec[kinds[0]]
        wanted = "two arms: start, end" if kind == "wise_ft" else "two or more arms"
        if (
            not isinstance(sources, list)
            or len(set(map(str, sources))) != len(sources)
            or len(sources) < 2
            or (kind == "wise_ft" and len(sources) != 2)
        ):
            raise _error(path, f"{where}.{kind}", f"expected {wanted}, got {sources!r}")
        unknown = [source for source in sources if source not in names]
        if unknown:
            raise _error(path, f"{where}.{kind}", f"no arm {', '.join(map(str, unknown))} (arms: {', '.join(names)})")
        alphas = spec.get("alphas", [])
        if "alphas" in spec and (kind != "wise_ft" or not isinstance(alphas, list) or not alphas
                                 or not all(isinstance(a, int | float) and 0 <= a <= 1 for a in alphas)):  # fmt: skip
            raise _error(path, f"{where}.alphas", f"wise_ft's mixing coefficients in [0, 1], got {alphas!r}")
        metric = spec.get("metric", "val/score")
        if not isinstance(metric, str) or not metric.startswith("val/"):
            raise _error(path, f"{where}.metric", f"expected a validation metric such as val/acc, got {metric!r}")
        result.append(WeightSpaceArm(str(name), kind, tuple(sources), tuple(float(a) for a in alphas), metric))
    return tuple(result)


def read_mapping(path: Path, kind: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """A study-like YAML file (`kind`: "study", "search") as a mapping of known keys; errors name the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise StudyError(f"{kind} file {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, Mapping):
        raise StudyError(f"{path}: a {kind} file is a mapping with keys {', '.join(keys)}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise _error(path, ", ".join(unknown), f"unknown key; a {kind} file has {', '.join(keys)}")
    return raw


def load_study(path: Path) -> Study:
    """Parse and check a study file; every error names the file and the key."""
    path = Path(path)
    raw = read_mapping(path, "study", KEYS)
    if "axes" not in raw and "arms" not in raw:
        raise _error(path, "axes/arms", "a study needs `axes`, `arms` or both")

    grid = _axes(path, raw["axes"]) if raw.get("axes") else []
    arms = [Arm(",".join(c.label for c in combo), combo) for combo in itertools.product(*grid)] if grid else []
    extra = _named_choices(path, "arms", ARM_AXIS, raw["arms"]) if raw.get("arms") else []
    _check_covers(path, grid, extra)
    arms += [Arm(c.label, (c,)) for c in extra]
    names = [arm.name for arm in arms]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _error(path, "arms", f"arm names repeat: {', '.join(repeated)}")

    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int and s >= 0 for s in seeds):
        raise _error(path, "seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _error(path, "seeds", f"seeds repeat: {seeds}")
    metrics = raw.get("metrics", ["test/acc"])
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise _error(path, "metrics", f"expected metric names such as test/acc, got {metrics!r}")
    curves = raw.get("curves", [])
    curves = [curves] if isinstance(curves, str) else curves
    if not isinstance(curves, list) or not all(isinstance(c, str) for c in curves):
        raise _error(path, "curves", f"expected validation metric names such as val/acc, got {curves!r}")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping) or "config" in overrides:
        raise _error(path, "overrides", "expected a mapping of config keys to values (files go in `config`)")
    _, keys = _overrides(path, "overrides", overrides)
    arms_tuple = tuple(arms)
    return Study(
        name=str(raw.get("name") or path.stem),
        path=path,
        description=str(raw.get("description") or "").strip(),
        configs=_config_files(path, "config", raw["config"]) if raw.get("config") else (),
        overrides=keys,
        arms=arms_tuple,
        seeds=tuple(seeds),
        metrics=tuple(metrics),
        baseline=_baseline(path, raw.get("baseline"), arms_tuple),
        curves=tuple(curves),
        weight_space=_weight_space(path, raw.get("weight_space"), arms_tuple),
    )
