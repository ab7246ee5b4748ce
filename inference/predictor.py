"""`Predictor`: an export folder -> predictions on images or texts, batched, on any device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference.folder import TOKENIZER, ExportFolderError, build_model, is_text, read_config
from inference.preprocess import ImagePreparer, TextPreparer


@dataclass(frozen=True)
class Prediction:
    """One input's prediction. Classification: `label`, its `probability` and the `top_k` (label,
    probability) pairs; regression: `score` (clipped to the training labels' range). `error`: why an input
    could not be read (`skip_unreadable=True`), all else empty."""

    label: str | None = None
    probability: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    score: float | None = None
    error: str | None = None


class Predictor:
    """An exported model, ready to predict (`Predictor.load(folder)`); see the `inference` package docstring."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        self.folder = Path(folder).expanduser()
        self.config = read_config(self.folder)
        self.device = torch.device(device)
        self.tokenizer = _load_tokenizer(self.folder, self.config) if is_text(self.config) else None
        self.model = build_model(self.folder, self.config).to(self.device)
        self._preparers: dict[str, Any] = {}

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Predictor:
        return cls(folder, device)

    @property
    def tasks(self) -> list[str]:
        return list(self.config["tasks"])

    def labels(self, task: str | None = None) -> list[str] | None:
        """Class names in output order (None: regression)."""
        spec = self.config["tasks"][self.task(task)]
        if spec["num_classes"] == 1:
            return None
        return list(spec["labels"]) if spec.get("labels") else [str(i) for i in range(spec["num_classes"])]

    def task(self, task: str | None) -> str:
        """`task`, checked; None: the only task (a multi-task model must be told which)."""
        if task is None and len(self.tasks) == 1:
            return self.tasks[0]
        if task is None or task not in self.config["tasks"]:
            raise ValueError(f"task {task!r} is not one of this model's tasks: {', '.join(self.tasks)}")
        return task

    def preparer(self, task: str | None = None) -> ImagePreparer | TextPreparer:
        name = self.task(task)
        if name not in self._preparers:
            spec = self.config["tasks"][name]["inputs"]
            self._preparers[name] = TextPreparer(spec, self.tokenizer) if is_text(self.config) else ImagePreparer(spec)
        return self._preparers[name]

    def logits(self, inputs: Sequence[Any], task: str | None = None, batch_size: int = 64) -> Tensor:
        """Raw outputs [N, classes] (regression: [N]) of `inputs`, in their order, on the CPU."""
        name = self.task(task)
        preparer = self.preparer(name)
        chunks = _chunks(inputs, batch_size) or [[]]
        logits = torch.cat([self._run([preparer.one(item) for item in chunk], name) for chunk in chunks])
        return logits.squeeze(-1) if self.config["tasks"][name]["num_classes"] == 1 else logits

    def predict(
        self,
        inputs: Sequence[Any],
        task: str | None = None,
        batch_size: int = 64,
        top_k: int = 5,
        skip_unreadable: bool = False,
    ) -> list[Prediction]:
        """One `Prediction` per input, in order. `skip_unreadable`: an unreadable input (a file no decoder
        reads, an input of the wrong kind) gets a `Prediction` with its `error` instead of raising."""
        name = self.task(task)
        predictions: list[Prediction] = []
        for chunk in _chunks(inputs, batch_size):
            prepared, errors = [], {}
            for i, item in enumerate(chunk):
                try:
                    prepared.append(self.preparer(name).one(item))
                except (ValueError, TypeError) as error:
                    if not skip_unreadable:
                        raise
                    errors[i] = str(error)
            decoded = iter(self._decode(self._run(prepared, name), name, top_k))
            predictions += [Prediction(error=errors[i]) if i in errors else next(decoded) for i in range(len(chunk))]
        return predictions

    @torch.inference_mode()
    def _run(self, prepared: list[Any], task: str) -> Tensor:
        if not prepared:
            return torch.empty(0, self.config["tasks"][task]["num_classes"])
        batch = self.preparer(task).batch(prepared)
        return self.model({k: v.to(self.device) for k, v in batch.items()}, task).float().cpu()

    def _decode(self, outputs: Tensor, task: str, top_k: int) -> list[Prediction]:
        labels = self.labels(task)
        if labels is None:
            low, high = self.config["tasks"][task].get("label_range") or (-float("inf"), float("inf"))
            return [Prediction(score=value) for value in outputs.squeeze(-1).clamp(low, high).tolist()]
        probabilities = outputs.softmax(-1)
        top = probabilities.topk(min(max(top_k, 1), probabilities.shape[-1]), dim=-1)
        return [
            Prediction(
                label=labels[indices[0]],
                probability=values[0],
                top_k=tuple((labels[i], p) for i, p in zip(indices, values, strict=True)),
            )
            for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]


def _load_tokenizer(folder: Path, config: dict[str, Any]) -> Any:
    """The folder's tokenizer, checked against the one the model was exported with (a swapped tokenizer
    would turn every input into other token ids without an error)."""
    from datamodules.tokenization import load_tokenizer, tokenizer_identity

    tokenizer = load_tokenizer(str(folder / TOKENIZER))
    recorded = config["backbone"].get("tokenizer_identity")
    if recorded is not None and tokenizer_identity(tokenizer, str(folder / TOKENIZER)) != recorded:
        raise ExportFolderError(folder, f"{TOKENIZER}/ is not the tokenizer this model was exported with")
    return tokenizer
