"""Shared test setup: no test touches the network; real data from ../shared is optional."""

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub or wandb, which read them once.
os.environ["TRANSFER_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared from the repository root, or a clean skip where it is absent (a user's clone)."""
    if not SHARED.is_dir():
        pytest.skip("../shared (real data and weights) is not present")
    return SHARED


@pytest.fixture(scope="session")
def cifar_resnet_weights(shared: Path) -> Path:
    path = shared / "weights" / "cifar10-resnet"
    if not path.is_dir():
        pytest.skip("CIFAR ResNet weights are not in ../shared")
    return path
