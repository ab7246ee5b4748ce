"""Bi-encoder heads for sentence pairs: each sentence encoded alone, then compared (Sentence-BERT).

Reimers & Gurevych, "Sentence-BERT" (EMNLP 2019): `cosine` scores a pair by the cosine of the two sentence
embeddings (their CosineSimilarityLoss regression objective), which is what a sentence embedder such as
all-MiniLM-L6-v2 was trained for, so fine-tuning starts from its zero-shot geometry; `concat` feeds
`[u, v, |u - v|, u * v]` to the linear head (their classification objective). A cross-encoder (both
sentences in one input, the default) sees the pair jointly instead but starts from an untrained head.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PairHead = Literal["cosine", "concat"]


def pair_width(num_features: int, kind: PairHead | None) -> int:
    """Width of what the linear head takes: the embedding (no pair head), the cosine, or the concatenation."""
    return num_features if kind is None else 1 if kind == "cosine" else 4 * num_features


def pair_features(u: Tensor, v: Tensor, kind: PairHead) -> Tensor:
    """The pair representation of sentence embeddings `u`, `v` [B, D]: [B, 1] cosine or [B, 4D] concatenation."""
    if kind == "cosine":
        return F.cosine_similarity(u.float(), v.float(), dim=-1).unsqueeze(-1).to(u.dtype)
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def second_sentences(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `pair_*` fields of a batch of pairs encoded apart, without the prefix (the backbone's input)."""
    return {key.removeprefix("pair_"): value for key, value in batch.items() if key.startswith("pair_")}


def init_cosine_head(head: nn.Linear, scale: float) -> None:
    """A regression head on the cosine starts as `scale * cos` (STS-B's 0-5 scores: scale 5, SBERT's objective)."""
    with torch.no_grad():
        head.weight.fill_(scale)
        head.bias.zero_()
