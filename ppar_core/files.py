"""Files ppar writes: one atomic writer, content hashes.

Every file a run, an evaluation or a conversion writes goes through `atomic_write`, so a reader (or a run resumed
after kill -9) sees the old file or the complete new one, never a part. Its temporary files are ppar's own
(`.<name>.<hex>.tmp` beside the target), so they can be recognised and cleared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from ppar_core.errors import PparError

_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Create or replace `path` all at once: readers see the old file or the complete new one, never a part.

    `write(tmp)` writes the content to a temporary file in the same folder (same filesystem, so the rename is atomic);
    the file is fsynced, renamed onto `path` with `os.replace`, and the folder fsynced so the rename survives a power
    cut. If `write` raises, the temporary file is removed and `path` is untouched. The folder is created if needed.
    `write`'s return value is ignored, so `lambda tmp: tmp.write_text(text)` is a valid writer.
    A process killed mid-write leaves only a hidden `.<name>.<hex>.tmp` beside `path`.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # O_EXCL: a unique name we alone own; mode 0o666 lets the umask decide permissions, as for a plain open().
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        write(tmp)
        # Some writers (safetensors) replace the file with a private 0600 one; give back the umask-derived mode.
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a Ctrl-C during a long checkpoint write must not leave the temporary file behind.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise PparError(f"File {path} does not exist: check the path.") from None
    return digest.hexdigest()


def is_own_temporary(path: Path) -> bool:
    """Whether `path` is a temporary file of `atomic_write` (`.<name>.<12 hex>.tmp`)."""
    return _TEMPORARY.fullmatch(path.name) is not None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files `atomic_write` left in `folder` when a process was killed mid-write -> them.

    Call it only where no other process writes (a locked run folder): a live writer's temporary looks the same.
    """
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp")):
        if path.is_file() and is_own_temporary(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_output_folder(folder: str | Path, *, what: str = "--out") -> Path:
    """PparError unless `folder` is a folder this process can write into, or can be created as one -> the path.

    Checked before any work starts, so a long run never fails at its first write. Nothing is created: the nearest
    existing folder is probed with a temporary file of ours, removed at once (permission bits alone would pass a
    read-only filesystem, and every folder for root).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PparError(f"{folder} is a file, but {what} needs a folder: pass a folder path.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PparError(f"{existing} is a file, so {folder} cannot be created as a folder for {what}.")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".ppar-probe-")
    except OSError as exc:
        raise PparError(
            f"Cannot write into {existing} ({exc.strerror}): it is read-only or not yours; pass a writable {what}."
        ) from None
    os.close(handle)
    os.unlink(probe)
    return folder


def check_output_file(
    path: str | Path,
    *,
    force: bool,
    kind: str | None = None,
    describe: Callable[[Path], str] | None = None,
    what: str = "--out",
) -> Path:
    """PparError unless `path` may be written -> the path.

    A folder is refused. An existing file is refused when `describe(path)` says it is not `kind` (e.g. "a model
    checkpoint" where "a prototypes file" is to be written): it is something else the user owns, so not even
    --force replaces it; an existing file of the right kind needs `force`. The folder must be writable.
    """
    path = Path(path)
    if path.is_dir():
        raise PparError(f"{path} is a folder, but {what} needs a file path.")
    if path.exists():
        found = describe(path) if describe is not None else None
        if kind is not None and found is not None and found != kind:
            raise PparError(f"{path} is {found}, not {kind}: ppar will not replace it; choose another {what}.")
        if not force:
            raise PparError(f"{path} already exists: pass --force to replace it, or choose another {what}.")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PparError(f"{existing} is a file, not a folder, so {path} cannot be written: choose another {what}.")
    check_output_folder(path.parent, what=what)
    return path


def next_free_folder(base: str | Path) -> Path:
    """`base` if it does not exist yet, else the first of `base-2`, `base-3`, ... that does not: a new folder for
    each run or prediction made without an explicit --out, so that none replaces another."""
    base = Path(base)
    candidate, n = base, 2
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate
