"""ImageNet subsets: an ImageFolderDataModule whose class folders are ImageNet-1k wnids."""

from __future__ import annotations

from typing import Any

from datamodules.folders import ImageFolderDataModule
from datamodules.imagenet_classes import check_wnids, imagenet_index, imagenet_name, resolve_wnids


class ImageNetSubsetDataModule(ImageFolderDataModule):
    """ImageNet-layout images (`<root>/<split>/<wnid>/*.JPEG`) of a chosen set of classes.

    Labels follow the sorted wnid order; each class also has its ImageNet-1k index and name
    (`imagenet_indices`, `class_info()`), so a backbone's pretrained 1000-way classifier can be used on
    the subset (`lightning_modules.ZeroShot`, `head_init: imagenet_rows`). The splits follow
    ImageFolderDataModule; the defaults fit ImageNet and Imagenette, whose `val/` is the test split.

    Args:
        classes: A preset (`imagenette`, `imagewoof`, `imagenet100`: CMC's ImageNet-100), a file with one
            wnid per line, or wnids (a list, or one comma-separated string); None: every wnid folder of the first
            split found.
        **kwargs: ImageFolderDataModule's arguments (root, splits, on_bad_file, max_per_class, ...).
    """

    def __init__(self, classes: list[str] | str | None = None, **kwargs: Any):
        super().__init__(classes=resolve_wnids(classes) if classes is not None else None, **kwargs)

    @property
    def class_names(self) -> list[str]:
        """The class wnids in label (sorted) order."""
        inferred = self._classes is None
        names = super().class_names
        if inferred:
            check_wnids(names, f"class folders of {self._inferred}")
        return names

    @property
    def imagenet_indices(self) -> list[int]:
        """ImageNet-1k class index of each label."""
        return [imagenet_index(wnid) for wnid in self.class_names]

    def class_info(self) -> list[dict[str, Any]]:
        return [
            {"label": i, "wnid": wnid, "imagenet_index": imagenet_index(wnid), "name": imagenet_name(wnid)}
            for i, wnid in enumerate(self.class_names)
        ]
