"""Tokenization of text rows, cached on disk, and the dataset that serves the token ids.

Rows are tokenized once, unpadded, into flat tensors (`input_ids`, `offsets`, `token_type_ids`) stored
under a key of the tokenizer's identity, `max_length` and the rows; `TokenizedDataset` slices them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.cache import save_atomically

log = logging.getLogger(__name__)

CACHE_VERSION = "transfer-tokenized-v1"
# Files that define a tokenizer loaded from a local folder; their bytes are its identity.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZE_CHUNK = 4096


def load_tokenizer(name: str) -> Any:
    """`AutoTokenizer.from_pretrained(name)` (never with remote code); errors name the config keys."""
    from transformers import AutoTokenizer  # transformers costs seconds to import: only text runs pay it

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise OSError(
            f"data.preprocessing.tokenizer: cannot load tokenizer {name!r} ({error}); it comes from "
            "model.backbone: use a text backbone, or give a local tokenizer folder"
        ) from error


def tokenizer_identity(tokenizer: Any, name: str) -> dict[str, Any]:
    """What makes two tokenizers tokenize alike, without machine-specific paths.

    A local folder is identified by the bytes of its tokenizer files, a hub name by the serialized
    fast tokenizer (or its vocabulary).
    """
    digest = hashlib.sha256()
    folder = Path(name).expanduser()
    files = [f for f in TOKENIZER_FILES if (folder / f).is_file()] if folder.is_dir() else []
    for filename in files:
        digest.update(filename.encode() + b"\x00" + (folder / filename).read_bytes())
    if not files:
        if getattr(tokenizer, "is_fast", False):
            digest.update(tokenizer.backend_tokenizer.to_str().encode())
        else:
            digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return {
        "name": folder.name if files else name,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": digest.hexdigest(),
    }


def tokenize_texts(tokenizer: Any, texts: list[list[str]], max_length: int) -> dict[str, torch.Tensor]:
    """Unpadded token ids of every row, flat: `input_ids` [T] int32, `offsets` [N + 1] and, when the
    tokenizer returns them, `token_type_ids` [T] int8. Pairs are truncated longest-first."""
    ids: list[list[int]] = []
    types: list[list[int]] = []
    for start in range(0, len(texts[0]), TOKENIZE_CHUNK):
        chunk = [column[start : start + TOKENIZE_CHUNK] for column in texts]
        encoded = tokenizer(
            text=chunk[0],
            text_pair=chunk[1] if len(chunk) > 1 else None,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
        )
        ids.extend(encoded["input_ids"])
        types.extend(encoded.get("token_type_ids") or [])
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.int64)
    out = {
        "input_ids": torch.tensor([t for row in ids for t in row], dtype=torch.int32),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
    }
    if types:
        out["token_type_ids"] = torch.tensor([t for row in types for t in row], dtype=torch.int8)
    return out


def cache_key(identity: dict[str, Any], max_length: int, rows_fingerprint: str) -> str:
    """sha256 naming the token ids of some rows: the tokenizer's identity, `max_length` and the rows."""
    params = {"version": CACHE_VERSION, "tokenizer": identity, "max_length": max_length, "rows": rows_fingerprint}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def load_tokenized(path: Path, num_rows: int) -> dict[str, torch.Tensor] | None:
    """The cached token ids at `path` if they are whole and hold `num_rows` rows, else None."""
    if not path.is_file():
        return None
    try:
        encoded = torch.load(path, map_location="cpu", weights_only=True)
        if len(encoded["offsets"]) == num_rows + 1 and int(encoded["offsets"][-1]) == len(encoded["input_ids"]):
            return encoded
    except Exception as error:  # a torn or foreign file: tokenize again and overwrite it
        log.warning("ignoring unreadable tokenization cache %s: %s", path, error)
    return None


def tokenize_cached(tokenizer: Any, texts: list[list[str]], max_length: int, path: Path) -> dict[str, torch.Tensor]:
    """`tokenize_texts`, read from `path` when a previous run wrote it, else computed and written there."""
    encoded = load_tokenized(path, len(texts[0]))
    if encoded is None:
        encoded = tokenize_texts(tokenizer, texts, max_length)
        save_atomically(encoded, path)
    return encoded


class TokenizedDataset(Dataset):
    """Unpadded token ids of one split; items are `{"input_ids", ["token_type_ids"], "labels", "index"}`.

    With `pair` (the second sentences, tokenized apart: a bi-encoder's input), items also hold
    `pair_input_ids` (and `pair_token_type_ids`)."""

    def __init__(
        self,
        encoded: dict[str, torch.Tensor],
        labels: torch.Tensor,
        index: torch.Tensor,
        pair: dict[str, torch.Tensor] | None = None,
    ):
        self.parts = {"": encoded} if pair is None else {"": encoded, "pair_": pair}
        self.offsets = {prefix: part["offsets"].tolist() for prefix, part in self.parts.items()}
        self.labels = labels
        self.index = index

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens per row (both sentences of a pair encoded apart)."""
        return sum(part["offsets"][1:] - part["offsets"][:-1] for part in self.parts.values())  # type: ignore[return-value]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"labels": self.labels[i], "index": self.index[i]}
        for prefix, part in self.parts.items():
            start, end = self.offsets[prefix][i], self.offsets[prefix][i + 1]
            item[f"{prefix}input_ids"] = part["input_ids"][start:end].long()
            if "token_type_ids" in part:
                item[f"{prefix}token_type_ids"] = part["token_type_ids"][start:end].long()
        return item
