"""Shared test setup: no test touches the network; real data from ../shared is optional."""

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub or wandb, which read them once.
os.environ["TRANSFER_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.pop("WANDB_API_KEY", None)

from shared_files import SHARED, require_shared  # noqa: E402  (after the environment above)


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared from the repository root, or a clean skip where it is absent (a user's clone; CI fails)."""
    return require_shared(SHARED, "../shared (real data and weights)")


@pytest.fixture(scope="session")
def cifar_resnet_weights(shared: Path) -> Path:
    return require_shared(shared / "weights" / "cifar10-resnet", "the CIFAR ResNet weights")
