"""Backbone features computed once per sample and reused: in memory, or on disk across runs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.fabric.utilities import move_data_to_device
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import DataLoader

from datamodules.cache import cache_root, save_atomically
from lightning_modules.backbones.base import backbone_inputs


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers: the exact identity of the weights, whatever their source."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader) -> Tensor:
    """Pooled features of every sample in `loader`, in loader order, as float32 on the CPU.

    The backbone gets what `TransferModule.features` gives it: a vision batch's `pixel_values`, a text
    batch whole (the tokenized dict; a text backbone picks its inputs from it).
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    chunks = []
    for batch in loader:
        inputs = backbone_inputs(batch)
        chunks.append(backbone(move_data_to_device(inputs, device)).float().cpu())
    backbone.train(was_training)
    return torch.cat(chunks)


class FeatureEncoder:
    """`(split, un-augmented loader) -> features`, keyed by backbone name + weights + data fingerprint."""

    def __init__(self, backbone: nn.Module, name: str, fingerprint: Callable[[str], str], cache_dir: bool | str | None):
        self.backbone = backbone
        self.name = name
        self.fingerprint = fingerprint
        # true: `features/` in the cache root ($TRANSFER_CACHE_DIR); a path: there; None or false: in memory only
        folder = cache_root() / "features" if cache_dir is True else cache_dir or None
        self.cache_dir = Path(folder).expanduser() if folder else None
        self._weights = weights_digest(backbone)
        self.extracted: list[str] = []  # splits computed (not read from disk) by this encoder

    def key(self, split: str) -> str:
        return hashlib.sha256(f"{self.name}|{self._weights}|{self.fingerprint(split)}".encode()).hexdigest()[:32]

    def __call__(self, split: str, loader: DataLoader) -> Tensor:
        path = self.cache_dir / f"{self.key(split)}.pt" if self.cache_dir else None
        if path is not None and path.exists():
            try:  # weights only: a file planted in the cache can hold tensors, never code that runs
                features = torch.load(path, map_location="cpu", weights_only=True)
                Console(stderr=True).print(f"feature cache: {split} features read from {path}")
                return features
            except Exception as error:  # a torn or foreign file: extract again and overwrite it
                Console(stderr=True).print(f"feature cache: ignoring unreadable {path} ({error}); extracting again")
        features = extract_features(self.backbone, loader)
        self.extracted.append(split)
        if path is not None:
            save_atomically(features, path)
        return features
