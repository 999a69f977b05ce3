"""Files ppar writes: one atomic writer, content hashes.

Every file a run, an evaluation or a conversion writes goes through `atomic_write`, so a reader (or a run resumed
after kill -9) sees the old file or the complete new one, never a part. Its temporary files are ppar's own
(`.<name>.<hex>.tmp` beside the target), so they can be recognised and cleared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from ppar_core.errors import PparError


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
