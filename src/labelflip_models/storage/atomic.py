"""Atomic file writes: readers see the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import StorageError

TEMP_SUFFIX = ".tmp"


def temp_prefix(path: Path) -> str:
    """Temp files of `path` start with this; one left behind was written by a process that died mid-write."""
    return f".{Path(path).name}."


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write every file to a temp file first, then rename them into place in the given order.

    A failed write (disk full, read-only) replaces nothing. Each file is atomic on its own; a process killed
    between two renames leaves the earlier files new and the later ones old, so put last the file whose
    presence marks the set complete.
    """
    temps: list[tuple[str, Path]] = []
    path = None
    try:
        for path, data in files.items():
            temps.append((_write_temp(Path(path), data), Path(path)))
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path} ({exc.strerror or exc}); no file was replaced") from None
        raise


def _write_temp(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file must live in the same directory so that os.replace is a rename, not a copy.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_files({Path(path): data})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files of `path` left by killed writers; only safe while holding the lock that guards `path`."""
    path = Path(path)
    stale = list(path.parent.glob(f"{temp_prefix(path)}*{TEMP_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
