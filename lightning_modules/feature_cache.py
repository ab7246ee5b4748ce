"""Backbone features computed once per sample and reused: in memory, or on disk across runs."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import DataLoader


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers: the exact identity of the weights, whatever their source."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader) -> Tensor:
    """Pooled features of every sample in `loader`, in loader order, as float32 on the CPU."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    chunks = [backbone(batch["pixel_values"].to(device)).float().cpu() for batch in loader]
    backbone.train(was_training)
    return torch.cat(chunks)


def save_atomically(obj: object, path: Path) -> None:
    """Write next to the target and rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class FeatureEncoder:
    """`(split, un-augmented loader) -> features`, keyed by backbone name + weights + data fingerprint."""

    def __init__(self, backbone: nn.Module, name: str, fingerprint: Callable[[str], str], cache_dir: str | None):
        self.backbone = backbone
        self.name = name
        self.fingerprint = fingerprint
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._weights = weights_digest(backbone)
        self.extracted: list[str] = []  # splits computed (not read from disk) by this encoder

    def key(self, split: str) -> str:
        return hashlib.sha256(f"{self.name}|{self._weights}|{self.fingerprint(split)}".encode()).hexdigest()[:32]

    def __call__(self, split: str, loader: DataLoader) -> Tensor:
        path = self.cache_dir / f"{self.key(split)}.pt" if self.cache_dir else None
        if path is not None and path.exists():
            Console(stderr=True).print(f"feature cache: {split} features read from {path}")
            return torch.load(path, map_location="cpu", weights_only=True)
        features = extract_features(self.backbone, loader)
        self.extracted.append(split)
        if path is not None:
            save_atomically(features, path)
        return features
