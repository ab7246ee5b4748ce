"""Extract dataset archives once into the cache, safely and atomically."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from datamodules.cache import cache_root

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ArchiveError(RuntimeError):
    """An archive that cannot be extracted (corrupt, truncated, or with unsafe members)."""


def is_archive(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


def _strip_suffix(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # The "data" filter silently strips a leading "/"; an archive that asks for absolute paths is
    # suspect, so refuse it outright, then apply the data filter ("..", links, devices, modes).
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


def extract_archive(path: str | os.PathLike) -> Path:
    """Extract a .tar / .tar.gz into `cache_root()/"data"/<name>-<hash>` and return that folder.

    The hash covers the resolved path, size and mtime, so a changed archive gets a fresh folder. Members
    go through tarfile's "data" filter (and absolute names are refused). Extraction happens in a temporary
    folder renamed into place at the end, so a half-extracted folder is never mistaken for a finished one;
    an existing extraction is reused.
    """
    archive = Path(path).expanduser().resolve()
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    stat = archive.stat()
    key = hashlib.sha256(f"{archive}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = cache_root() / "data" / f"{_strip_suffix(archive.name)}-{key}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter=_safe_filter)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArchiveError(f"cannot extract {archive}: {exc} (corrupt, truncated or unsafe archive?)") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, dest)
    except OSError:
        # Another process finished the same extraction first: use theirs.
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    return dest
