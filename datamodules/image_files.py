"""Reading image files robustly: the fastest decoder that can, a cheap check for unreadable files, and a
folder dataset that stops on a bad file (naming it) or leaves it out.

torchvision.io decodes JPEG, PNG, GIF and WebP (libjpeg-turbo for JPEG); PIL reads what it cannot (other
formats under an image extension, unusual colour modes). Both refuse a truncated file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.functional import pil_to_tensor

from datamodules.datasets import Transform
from datamodules.image_folder import ImageFolderDataset

OnBadFile = Literal["error", "skip"]
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
OTHER_SIGNATURES = (b"GIF87a", b"GIF89a")  # WebP: b"RIFF" + size + b"WEBP"
TAIL_BYTES = 1024  # an end marker followed by this much padding still counts as complete


class UnreadableImageError(RuntimeError):
    """An image file that no decoder can read (not an image, empty, truncated or corrupt)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(
            f"unreadable image file {path}: {reason}. Remove or replace it, or set data.on_bad_file=skip "
            "to leave unreadable files out (they are counted in the log)"
        )
        self.path = str(path)
        self.reason = reason


def decode_image_file(path: str | os.PathLike) -> torch.Tensor:
    """uint8 RGB [3, H, W] from torchvision.io, or PIL where torchvision cannot read the file."""
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as torchvision_error:
        try:
            with Image.open(path) as image:
                return pil_to_tensor(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as pil_error:
            raise UnreadableImageError(path, str(pil_error) or type(pil_error).__name__) from torchvision_error


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
