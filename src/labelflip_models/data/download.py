"""torchvision's opt-in downloads, made safe to fail: nothing half-fetched stays behind, the error is a DataError."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import DataError


def _existing(targets: Iterable[Path]) -> set[Path]:
    found = set()
    for target in targets:
        if target.exists():
            found.add(target)
            if target.is_dir():
                found.update(target.rglob("*"))
    return found


def safe_download(name: str, data_dir: Path, fetch: Callable[[], object], targets: Iterable[Path],
                  offline_advice: str) -> None:
    """Run `fetch` (a torchvision download into `data_dir`) that writes only at or below `targets`.

    If it fails, every path it added there is removed (and `data_dir`, had it created that), and the error becomes
    one DataError line ending in `offline_advice`, what to do without network access.
    """
    targets = list(targets)
    before = _existing(targets)
    created_root = not data_dir.exists()
    try:
        fetch()
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError... after trying every mirror
        for path in sorted(_existing(targets) - before, reverse=True):  # files before their folders
            path.rmdir() if path.is_dir() else path.unlink()
        if created_root and data_dir.is_dir() and not any(data_dir.iterdir()):
            data_dir.rmdir()
        reason = next((line for line in str(exc).splitlines()[::-1] if line.strip()), type(exc).__name__)
        raise DataError(f"downloading {name} into {data_dir} failed ({reason.strip()}); "
                        f"without network access, {offline_advice}") from None
