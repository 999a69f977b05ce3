"""files: the atomic writer and file hashes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from ppar_core.errors import PparError
from ppar_core.files import atomic_write, file_sha256

# ---------------------------------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"  # the folder is created
    atomic_write(target, lambda tmp: tmp.write_bytes(b"first"))
    atomic_write(target, lambda tmp: tmp.write_bytes(b"second"))
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_write_leaves_the_old_file_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old content")

    def failing(tmp: Path) -> None:
        assert tmp.parent == target.parent and tmp != target  # a temporary in the same folder
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # the temporary is gone


def test_atomic_write_cleans_up_on_keyboard_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_umask_permissions_even_if_the_writer_makes_a_private_file(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"

    def private_writer(tmp: Path) -> None:
        # Like safetensors: remove and recreate the file as 0600.
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"x")
        os.close(fd)

    old = os.umask(0o022)
    try:
        atomic_write(target, private_writer)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB read chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    with pytest.raises(PparError, match="missing.*does not exist"):
        file_sha256(tmp_path / "missing")
