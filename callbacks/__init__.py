"""Callbacks for what Lightning lacks."""

from callbacks.run_metadata import RunMetadata

__all__ = ["RunMetadata"]
