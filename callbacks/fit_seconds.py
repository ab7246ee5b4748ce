"""Wall seconds of a fit, across interruptions: what `--test_after_fit` reports as `fit_seconds`."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback


class FitSeconds(Callback):
    """Counts from `start()`; every checkpoint holds the seconds so far, and a run resumed from one goes on
    counting from there, so an interrupted run reports the time of all its parts, not of its last."""

    def __init__(self) -> None:
        self.before, self.started = 0.0, time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("seconds", 0.0))
