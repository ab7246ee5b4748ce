"""Packages that import their public names on first use (PEP 562), so that importing one plain-PyTorch module
of theirs does not import every other (and Lightning with them)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(
    package: str, where: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], Callable[[], None]]:
    """`__getattr__`, `__dir__` and `import_all` of `package`, whose name `n` lives in its module `where[n]`."""

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    def import_all() -> None:
        """Import every name (e.g. so that class paths of checkpoints and configs find all subclasses)."""
        for name in where:
            getattr_(name)

    return getattr_, dir_, import_all
