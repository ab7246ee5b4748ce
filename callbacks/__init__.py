"""Callbacks (and the checkpoint writer) for what Lightning lacks."""

from callbacks.atomic_checkpoint_io import AtomicCheckpointIO
from callbacks.exact_resume import ExactResume
from callbacks.gradual_unfreezing import GradualUnfreezing
from callbacks.interruptions import CheckpointOnSigterm
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.prediction_writer import PredictionWriter
from callbacks.run_metadata import RunMetadata
from callbacks.speed import Speed
from callbacks.weight_averaging import EMAWeightAveraging

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointOnSigterm",
    "EMAWeightAveraging",
    "ExactResume",
    "GradualUnfreezing",
    "ModelCheckpoint",
    "PredictionWriter",
    "RunMetadata",
    "Speed",
]
