"""Inputs -> model inputs, exactly as the training data made them ready at evaluation (`input_spec`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from datamodules.decode import UnreadableImageError, decode_image_file, pil_to_rgb
from datamodules.transforms import Preprocessing, normalize, resize_crop

ImageInput = str | os.PathLike | Image.Image | Tensor
TextInput = str | tuple[str, str] | list[str]


class ImagePreparer:
    """Image files, PIL images or tensors ([3, H, W], uint8 or float in [0, 1]) -> normalised [B, 3, S, S]:
    the short side resized to S, the centre cropped, normalised with the backbone's mean and std."""

    def __init__(self, spec: dict[str, Any]):
        mean, std = tuple(spec["mean"]), tuple(spec["std"])
        preprocessing = Preprocessing(spec["image_size"], mean, std, spec["interpolation"])  # type: ignore[arg-type]
        self.resize = resize_crop(preprocessing, spec["image_size"])
        self.normalize = normalize(preprocessing)

    def one(self, item: ImageInput) -> Tensor:
        """One input as a normalised [3, S, S] tensor; an unreadable file raises ValueError naming it."""
        if isinstance(item, str | os.PathLike):
            try:
                image = decode_image_file(Path(item))
            except UnreadableImageError as error:
                raise ValueError(f"unreadable image file {item}: {error.reason}") from None
        elif isinstance(item, Image.Image):
            image = pil_to_rgb(item)
        elif isinstance(item, Tensor):
            if item.ndim != 3 or item.shape[0] not in (1, 3):
                raise ValueError(f"an image tensor must be [3, H, W] (or [1, H, W]), got shape {list(item.shape)}")
            image = item.expand(3, -1, -1)
        else:
            raise TypeError(f"an image input must be a file path, a PIL image or a tensor, got {type(item).__name__}")
        return self.normalize(self.resize(image))

    def batch(self, items: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"pixel_values": torch.stack(list(items))}


class TextPreparer:
    """Sentences (or sentence pairs, as 2-tuples) -> the tokenized dict, tokenized as the training data was:
    truncated to `max_length` (pairs longest-first), the two sentences apart for a bi-encoder."""

    def __init__(self, spec: dict[str, Any], tokenizer: Any):
        self.tokenizer = tokenizer
        self.max_length = spec["max_length"]
        self.columns = list(spec["text_columns"])
        self.separate_pairs = spec["separate_pairs"]

    def one(self, item: TextInput) -> tuple[str, ...]:
        row = (item,) if isinstance(item, str) else tuple(item)
        if len(row) != len(self.columns) or not all(isinstance(text, str) for text in row):
            shape = "a string" if len(self.columns) == 1 else f"a pair of strings ({', '.join(self.columns)})"
            raise ValueError(f"this model takes {shape} per input, got {item!r}")
        return row

    def batch(self, rows: Sequence[tuple[str, ...]]) -> dict[str, Tensor]:
        columns = [list(column) for column in zip(*rows, strict=True)]
        if not self.separate_pairs:
            return self._tokenize(*columns)
        first, second = (self._tokenize(column) for column in columns)
        return {**first, **{f"pair_{key}": value for key, value in second.items()}}

    def _tokenize(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, Tensor]:
        encoded = self.tokenizer(
            text=texts, text_pair=pairs, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        return dict(encoded)
