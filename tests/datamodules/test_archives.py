import io
import os
import tarfile
from pathlib import Path

import pytest

from datamodules.archives import ArchiveError, extract_archive
from datamodules.cache import cache_root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cache_root_from_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"
    monkeypatch.delenv("TRANSFER_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "transfer"


def test_extracts_into_cache_and_reuses(tmp_path, cache, monkeypatch):
    archive = write_tar(tmp_path / "tiny.tar.gz", {"train/a/1.txt": b"one", "test/a/2.txt": b"two"})
    out = extract_archive(archive)
    assert out.parent == cache / "data" and out.name.startswith("tiny-") and len(out.name) == len("tiny-") + 12
    assert (out / "train/a/1.txt").read_bytes() == b"one"
    assert [p.name for p in (cache / "data").iterdir()] == [out.name]  # no temporary folder left behind

    def no_reopen(*args, **kwargs):
        raise AssertionError("archive opened again")

    monkeypatch.setattr(tarfile, "open", no_reopen)
    assert extract_archive(str(archive)) == out


def test_changed_archive_gets_a_fresh_folder(tmp_path):
    archive = write_tar(tmp_path / "tiny.tar.gz", {"a.txt": b"old"})
    first = extract_archive(archive)
    write_tar(archive, {"a.txt": b"newer"})
    second = extract_archive(archive)
    assert second != first and (second / "a.txt").read_bytes() == b"newer"


@pytest.mark.parametrize("payload", ["garbage", "truncated"])
def test_corrupt_archive_names_the_file_and_leaves_nothing(tmp_path, cache, payload):
    good = write_tar(tmp_path / "good.tar.gz", {f"f{i}.bin": os.urandom(10_000) for i in range(5)})
    bad = tmp_path / "bad.tar.gz"
    data = good.read_bytes()
    bad.write_bytes(b"not a tar file at all" if payload == "garbage" else data[: len(data) // 2])
    with pytest.raises(ArchiveError, match=r"bad\.tar\.gz"):
        extract_archive(bad)
    assert not (cache / "data").exists() or list((cache / "data").iterdir()) == []


def test_missing_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tar.gz"):
        extract_archive(tmp_path / "nope.tar.gz")


@pytest.mark.parametrize("name", ["../escape.txt", "ok/../../escape.txt", "/abs/escape.txt"])
def test_unsafe_member_is_rejected(tmp_path, cache, name):
    archive = write_tar(tmp_path / "evil.tar.gz", {"fine.txt": b"x", name: b"pwned"})
    with pytest.raises(ArchiveError, match="evil.tar.gz"):
        extract_archive(archive)
    assert not list(tmp_path.rglob("escape.txt"))
    assert list((cache / "data").iterdir()) == []


def test_link_out_of_destination_is_rejected(tmp_path, cache):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="link.tar.gz"):
        extract_archive(archive)
