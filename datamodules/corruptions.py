"""Test sets under distribution shift: the common corruptions of Hendrycks & Dietterich (ICLR 2019).

"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations": 15 corruptions (noise,
blur, weather, digital) at 5 severities, plus 4 held-out validation corruptions. The corruptions are
those of the `imagecorruptions` package (the ImageNet-C code, installed as `imagecorruptions-imaug`, the
maintained release that runs on current scikit-image and SciPy), not re-implemented here.

Protocol (ImageNet-C's): each test image is resized and cropped to the model's input size, corrupted as
uint8 RGB, then normalised. Image `i` of a set draws its noise from a seed made of the corruption, the
severity and `i`, so a set is the same on every run, worker and machine; each set is computed once and
cached (`$TRANSFER_CACHE_DIR/corruptions`), since corrupting costs about as much as the model's forward.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.cache import cache_root, write_atomically
from datamodules.datasets import ImageDataset

Transform = Callable[[torch.Tensor], torch.Tensor]
GROUPS = ("common", "validation", "all", "noise", "blur", "weather", "digital")  # imagecorruptions' subsets
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # imagecorruptions refuses smaller images
PROTOCOL = "transfer-corruptions-v1"  # bump when the seeding or the pipeline changes: old caches are ignored
_OWN_SEED = ("glass_blur", "impulse_noise")  # take a seed argument; the others draw from numpy's global generator


def corruption_names(selection: Sequence[str]) -> list[str]:
    """Corruption names, with the package's groups ("common": the 15 of the benchmark, "noise", "blur",
    "weather", "digital", "validation", "all") expanded, in the package's order, without repeats."""
    from imagecorruptions import get_corruption_names

    known = get_corruption_names("all")
    chosen: set[str] = set()
    for name in selection:
        if name in GROUPS:
            chosen.update(get_corruption_names(name))
        elif name in known:
            chosen.add(name)
        else:
            raise ValueError(f"data.corruptions: unknown corruption {name!r}; expected one of {[*GROUPS, *known]}")
    return [name for name in known if name in chosen]


def image_seed(corruption: str, severity: int, index: int) -> int:
    """The seed of image `index` in the set (`corruption`, `severity`): stable across processes and machines."""
    return zlib.crc32(f"{corruption}/{severity}/{index}".encode())


def corrupt_image(image: torch.Tensor, corruption: str, severity: int, seed: int) -> torch.Tensor:
    """uint8 CHW RGB -> the same image corrupted, uint8 CHW; numpy's global generator is left as it was."""
    from imagecorruptions import corrupt

    pixels = image.permute(1, 2, 0).contiguous().numpy()
    options = {"seed": seed} if corruption in _OWN_SEED else {}
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = corrupt(pixels, severity=severity, corruption_name=corruption, **options)
    finally:
        np.random.set_state(state)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1).contiguous()


class CorruptedImages(Dataset):
    """Test images at the model's input size (uint8, `geometry` applied), corrupted; computed on access."""

    def __init__(self, samples: ImageDataset, corruption: str, severity: int, geometry: Transform):
        self.samples, self.corruption, self.severity, self.geometry = samples, corruption, severity, geometry

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.geometry(self.samples.load_image(i))
        return corrupt_image(image, self.corruption, self.severity, image_seed(self.corruption, self.severity, i))


class CachedImages(Dataset):
    """A cached uint8 [N, H, W, 3] array (memory-mapped) with labels, as the vision batch dict, normalised."""

    def __init__(self, path: Path, labels: torch.Tensor, normalize: Transform):
        self.images = np.load(path, mmap_mode="r", allow_pickle=False)
        if len(self.images) != len(labels):
            raise ValueError(f"{path}: {len(self.images)} cached images for {len(labels)} labels; delete the file")
        self.labels, self.normalize = labels, normalize

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)
        return {"pixel_values": self.normalize(image), "labels": self.labels[i], "index": torch.tensor(i)}


def cached_corruption(
    samples: ImageDataset,
    corruption: str,
    severity: int,
    geometry: Transform,
    normalize: Transform,
    fingerprint: str,
    num_workers: int = 0,
    root: Path | None = None,
) -> CachedImages:
    """The set (`corruption`, `severity`) of `samples`, computed once (in `num_workers` processes) into
    `root` (default `$TRANSFER_CACHE_DIR/corruptions`) under a name made of the test split's `fingerprint`
    (its images, order and input size), the corruption, the severity and the package version."""
    key = f"{PROTOCOL}|{version('imagecorruptions-imaug')}|{fingerprint}|{corruption}|{severity}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    path = (root or cache_root() / "corruptions") / f"{corruption}-{severity}-{digest}.npy"
    if not path.exists():
        loader = DataLoader(CorruptedImages(samples, corruption, severity, geometry), batch_size=32,
                            num_workers=num_workers)  # fmt: skip
        images = torch.cat(list(loader)) if len(samples) else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        array = images.permute(0, 2, 3, 1).contiguous().numpy()
        write_atomically(path, lambda handle: np.save(handle, array, allow_pickle=False))
    return CachedImages(path, samples.labels, normalize)
