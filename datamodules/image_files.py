"""Reading image files robustly: a cheap check for unreadable files, and a folder dataset that stops on a bad
file (naming it) or leaves it out. Decoding itself is `datamodules.decode`'s."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from datamodules.datasets import Transform
from datamodules.decode import UnreadableImageError, decode_image_file
from datamodules.image_folder import ImageFolderDataset

OnBadFile = Literal["error", "skip"]
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
OTHER_SIGNATURES = (b"GIF87a", b"GIF89a")  # WebP: b"RIFF" + size + b"WEBP"
TAIL_BYTES = 1024  # an end marker followed by this much padding still counts as complete


def _suspicion(path: Path) -> str | None:
    """Why a file may be unreadable, from its first bytes and its end only; None when it looks whole."""
    with open(path, "rb") as handle:
        head = handle.read(16)
        if not head:
            return "empty file"
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - TAIL_BYTES))
        tail = handle.read()
    if head.startswith(JPEG):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(PNG):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head.startswith(OTHER_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return "not a JPEG, PNG, GIF or WebP file"


def find_unreadable(root: Path, files: Sequence[str]) -> dict[int, str]:
    """Positions of files under `root` that cannot be decoded -> why.

    Costs two small reads per file: only files whose signature or end marker looks wrong are decoded
    in full to confirm (a BMP under a .jpg name, or a JPEG with a long trailer, is still readable).
    """
    bad = {}
    for i, name in enumerate(files):
        path = root / name
        reason = _suspicion(path)
        if reason is None:
            continue
        try:
            decode_image_file(path)
        except UnreadableImageError:
            bad[i] = reason
    return bad


class CheckedImageFolderDataset(ImageFolderDataset):
    """An ImageFolderDataset decoded with `decode_image_file`.

    A file that fails to decode at load time (it passed the scan-time check, `find_unreadable`) raises
    `UnreadableImageError` naming it with `on_bad_file="error"`; with `"skip"` the next readable sample
    of the same class stands in for it (same label, same batch size, so cached features stay aligned)
    and a warning names the file.
    """

    def __init__(
        self,
        root: Path,
        files: Sequence[str] | np.ndarray,
        sizes: Sequence[int] | np.ndarray,
        labels: torch.Tensor,
        transform: Transform | None = None,
        on_bad_file: OnBadFile = "error",
    ):
        super().__init__(root, files, sizes, labels, transform)
        self.on_bad_file = on_bad_file

    def load_image(self, i: int) -> torch.Tensor:
        try:
            return decode_image_file(self.root / str(self.files[i]))
        except UnreadableImageError as error:
            if self.on_bad_file == "error":
                raise
            same_class = torch.nonzero(self.labels == self.labels[i]).flatten().tolist()
            for j in same_class[same_class.index(i) + 1 :] + same_class[: same_class.index(i)]:
                try:
                    image = decode_image_file(self.root / str(self.files[j]))
                except UnreadableImageError:
                    continue
                message = f"data.on_bad_file=skip: {error.path} is unreadable; {self.files[j]} stands in for it"
                warnings.warn(message, stacklevel=2)
                return image
            raise
