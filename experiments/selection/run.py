"""One candidate -> its features on the target's un-augmented splits -> its transferability scores.

Features go through the feature cache (`lightning_modules.feature_cache.FeatureEncoder`), keyed by the
candidate, its weights and the data's fingerprint: a second selection over the same data is nearly free.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, seed_everything
from torch import Tensor

from experiments.selection.candidates import Candidate, prepare
from lightning_modules.backbones import create_backbone
from lightning_modules.feature_cache import FeatureEncoder
from lightning_modules.transferability import SCORES, compute_scores


@dataclass
class Encoded:
    features: dict[str, Tensor]  # split -> [rows, D]
    labels: dict[str, Tensor]
    source_probs: dict[str, Tensor]  # split -> the source classifier's softmax; empty when it does not apply
    seconds: float  # building the backbone and encoding (near 0 when read from the cache)
    cached: bool


@dataclass
class Scored:
    candidate: Candidate
    scores: dict[str, float]
    num_features: int
    rows: int
    feature_seconds: float
    score_seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def build_datamodule(data_config: dict[str, Any]) -> LightningDataModule:
    """The `data` section of a resolved `transfer fit` config -> its datamodule, instantiated by jsonargparse
    (so nested values such as the linked preprocessing get their types), set up for fit."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_object({"data": data_config})).data
    datamodule.setup("fit")
    return datamodule


def target_data(resolved: dict[str, Any]) -> dict[str, Any]:
    """The `data` section of a resolved `transfer fit` config with the model's backbone preprocessing in it:
    the parser links it into the data only when it instantiates, so a dumped config lacks it (and the
    datamodule would fall back to its own default resolution and mean/std)."""
    from experiments.cli import preprocessing_of

    data = json.loads(json.dumps(resolved["data"]))
    init_args = data.setdefault("init_args", {})
    if init_args.get("preprocessing") is None:
        model = resolved["model"]["init_args"]
        init_args["preprocessing"] = preprocessing_of(model["backbone"], model.get("backbone_kwargs"))
    return data


def data_key(data_config: dict[str, Any]) -> str:
    return json.dumps(data_config, sort_keys=True, default=str)


def is_regression(datamodule: Any) -> bool:
    return getattr(datamodule, "num_classes", 2) == 1


def encode(
    candidate: Candidate,
    datamodule: Any,
    cache_dir: Path | None,
    device: torch.device,
    seed: int = 0,
    splits: tuple[str, ...] = ("train",),
) -> Encoded:
    """Features of `splits` (un-augmented, in dataset order) by `candidate`, and its source probabilities."""
    started = time.perf_counter()
    seed_everything(seed, verbose=False)  # the random initialisation of a `pretrained: false` control
    backbone = create_backbone(candidate.backbone, pretrained=candidate.pretrained, weights=candidate.weights)
    extractor, head = prepare(backbone, candidate)
    extractor.to(device)
    encoder = FeatureEncoder(
        extractor, candidate.identity, datamodule.fingerprint, str(cache_dir) if cache_dir else None
    )
    features, labels, probs = {}, {}, {}
    for split in splits:
        loader, labels[split] = datamodule.feature_source(split)
        features[split] = encoder(split, loader)
        if head is not None:
            with torch.no_grad():
                probs[split] = head.double().cpu()(features[split].double()).softmax(-1)
    return Encoded(features, labels, probs, time.perf_counter() - started, not encoder.extracted)


def applies(name: str, regression: bool, has_source: bool) -> bool:
    """Score `name` is defined for this target and candidate (LEEP and NCE need a source classifier)."""
    score = SCORES[name]
    return (score.regression or not regression) and (has_source or not score.needs_source)


def score(candidate: Candidate, encoded: Encoded, names: list[str] | None, regression: bool) -> Scored:
    """Every score of `names` (default all) that applies, on the training split, each timed."""
    features, labels = encoded.features["train"], encoded.labels["train"]
    probs = encoded.source_probs.get("train")
    scored = Scored(candidate, {}, features.shape[1], len(features), encoded.seconds, {}, encoded.cached)
    for name in names or list(SCORES):
        if applies(name, regression, probs is not None):
            started = time.perf_counter()
            source = probs.numpy() if probs is not None else None
            value = compute_scores(features.numpy(), labels.numpy(), source, regression, names=[name])[name]
            scored.scores[name], scored.score_seconds[name] = value, time.perf_counter() - started
    return scored
