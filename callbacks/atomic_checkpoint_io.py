"""Checkpoint files that are either complete or absent: never half-written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_modules.lightning_internals import CheckpointPath

PARTIAL = ".partial"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, writing local files atomically and durably.

    Lightning writes through an fsspec transaction whose temporary file lives in the system temp folder: on
    another file system the final move is a copy into the checkpoint itself, and a kill during it leaves a
    truncated `last.ckpt` (nothing is fsynced either). Here the checkpoint goes to a hidden temporary file
    beside its target, is flushed to disk, and replaces the target in one `os.replace`; the folder entry is
    fsynced too. A crash or SIGKILL at any moment leaves the previous file intact; the temporary file of a
    killed process is removed by the next save to that name, and one of a failed save at once.
    Remote paths (s3://, ...) go through Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: CheckpointPath, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_partials(target)
        partial = target.with_name(f".{target.name}.{os.getpid()}{PARTIAL}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self._fsync_folder(target.parent)

    @staticmethod
    def _remove_stale_partials(target: Path) -> None:
        for leftover in target.parent.glob(f".{target.name}.*{PARTIAL}"):
            pid = leftover.name[len(target.name) + 2 : -len(PARTIAL)]
            if pid.isdigit() and not _alive(int(pid)):
                leftover.unlink(missing_ok=True)

    @staticmethod
    def _fsync_folder(folder: Path) -> None:
        with contextlib.suppress(OSError):  # not every file system lets a folder be opened and synced
            descriptor = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
