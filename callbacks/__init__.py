"""Callbacks for what Lightning lacks."""

from callbacks.gradual_unfreezing import GradualUnfreezing
from callbacks.prediction_writer import PredictionWriter
from callbacks.run_metadata import RunMetadata

__all__ = ["GradualUnfreezing", "PredictionWriter", "RunMetadata"]
