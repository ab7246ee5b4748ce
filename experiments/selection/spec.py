"""Selection files: the data to select for and the candidates to rank, like a study file.

    description: EfficientNet-Lite0 against the CIFAR ResNets on digits at 128 px
    configs: ../configs/digits/fine_tuning.yaml     # config pieces whose `data` section is the target
    set: {data.init_args.image_size: 128}           # config keys, as `transfer fit --KEY VALUE`
    candidates:                                     # names, or name -> backbone / {backbone, weights,
      lite0: efficientnet_lite0                     #   pretrained, cut, layers, pooling, set}, or a file
      lite0_block4: {backbone: efficientnet_lite0, cut: model.blocks.4}
      lite0_random: {backbone: efficientnet_lite0, pretrained: false}
    scores: [logme, knn, linear_probe]              # optional: default every score that applies
    rank_by: logme                                  # optional

Paths of config files are relative to the selection file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.ablation.study import StudyError, _config_files, _overrides
from experiments.selection.candidates import Candidate, parse_candidates
from lightning_modules.transferability import SCORES

KEYS = ("description", "configs", "set", "candidates", "scores", "rank_by")
DEFAULT_RANK_BY = "logme"


@dataclass
class Selection:
    name: str
    description: str = ""
    configs: tuple[Path, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    candidates: list[Candidate] = field(default_factory=list)
    scores: list[str] | None = None
    rank_by: str = DEFAULT_RANK_BY


def check_scores(scores: list[str] | None, rank_by: str, where: str) -> None:
    for name in [*(scores or []), rank_by]:
        if name not in SCORES:
            raise ValueError(f"{where}: unknown score {name!r}; known: {', '.join(SCORES)}")
    if scores is not None and rank_by not in scores:
        raise ValueError(f"{where}: rank_by {rank_by!r} is not among the scores computed ({', '.join(scores)})")


def _zoo(path: Path, value: Any) -> Any:
    """`candidates: zoo.yaml` (relative to the selection file): the mapping of candidates in that file, shared
    by several selections."""
    if not isinstance(value, str) or not value.endswith((".yaml", ".yml")):
        return value
    file = path.parent / value
    try:
        return yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: candidates: {error}") from None


def load_selection(path: Path) -> Selection:
    """Read and check a selection file; errors (ValueError) name the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"selection file {path}: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"selection file {path}: expected a mapping with {', '.join(KEYS)}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a selection file takes {', '.join(KEYS)}")
    try:
        configs = _config_files(path, "configs", raw["configs"]) if "configs" in raw else ()
        _, overrides = _overrides(path, "set", raw.get("set"))
    except StudyError as error:
        raise ValueError(str(error)) from None
    if "candidates" not in raw:
        raise ValueError(f"{path}: `candidates` is missing (backbone names, or name -> candidate)")
    scores = raw.get("scores")
    if scores is not None and (not isinstance(scores, list) or not scores):
        raise ValueError(f"{path}: scores: expected a list of score names, got {scores!r}")
    selection = Selection(
        name=path.stem,
        description=str(raw.get("description") or ""),
        configs=configs,
        overrides=overrides,
        candidates=parse_candidates(_zoo(path, raw["candidates"]), f"{path}: candidates"),
        scores=scores,
        rank_by=str(raw.get("rank_by") or (scores[0] if scores else DEFAULT_RANK_BY)),
    )
    check_scores(selection.scores, selection.rank_by, str(path))
    return selection
