"""Output directories a user names: checked before any work, so a long run never fails at its last step."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import ConfigError


def check_out_dir(out: Path) -> Path:
    """Fail before any work if `out` cannot become a writable directory; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output directory {out} cannot be created: {existing} is not a directory")
    try:
        # A real write, not os.access: root passes access checks on read-only mounts.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {out} is not writable: creating a file in {existing} failed "
                          f"({exc.strerror})") from None
    return out
