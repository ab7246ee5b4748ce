"""An image file -> uint8 RGB [3, H, W], whatever its format and depth: the one decoder every dataset and the
predictor use.

torchvision.io decodes JPEG, PNG, GIF and WebP (libjpeg-turbo for JPEG); PIL reads what it cannot (other
formats under an image extension, unusual colour modes). Both refuse a truncated file. 16-bit images (PNG, TIFF)
are scaled to 8 bits (the top byte), never clipped, so every image of a dataset has one dtype and one range.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.functional import pil_to_tensor
from torchvision.transforms.v2.functional import to_dtype

# PIL modes of one channel with more than 8 bits per pixel: `convert("RGB")` clips them at 255.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


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
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as torchvision_error:
        try:
            with Image.open(path) as pil_image:
                return pil_to_rgb(pil_image)
        except (OSError, ValueError, Image.DecompressionBombError) as pil_error:
            raise UnreadableImageError(path, str(pil_error) or type(pil_error).__name__) from torchvision_error
    return to_dtype(image, torch.uint8, scale=True)  # a 16-bit PNG decodes to uint16


def pil_to_rgb(image: Image.Image) -> torch.Tensor:
    """uint8 RGB [3, H, W] of a PIL image; a 16-bit grey one scaled to 8 bits as `decode_image_file` does."""
    if image.mode in WIDE_GREY_MODES:
        grey = torch.from_numpy((np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8))
        return grey.expand(3, -1, -1).contiguous()
    return pil_to_tensor(image.convert("RGB"))
