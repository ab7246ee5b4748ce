"""Real data and weights from ../shared: present on this project's machines and in CI, absent in a user's clone."""

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def require_shared(path: Path, what: str) -> Path:
    """`path`, or a skip naming it where it is absent; with `CI` set, a failure instead (no silent skips in CI)."""
    if path.exists():
        return path
    message = f"{what} is not present: {path}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so a test that needs ../shared fails instead of skipping)")
    pytest.skip(message)
