"""Where datasets live: the data dir a caller names, or $LABELFLIP_DATA_DIR. A named directory must exist."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

DATA_DIR_ENV = "LABELFLIP_DATA_DIR"


def named_data_dir(data_dir: str | os.PathLike | None, download: bool = False) -> Path | None:
    """`data_dir`, else $LABELFLIP_DATA_DIR, else None (then only system locations are searched).

    A named directory that does not exist is an error rather than a silent fall-back to another copy of the data;
    a download creates it.
    """
    if data_dir is not None and str(data_dir) != "":
        path, named_by = Path(data_dir), "`data_dir`"
    elif os.environ.get(DATA_DIR_ENV):
        path, named_by = Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    else:
        return None
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{named_by} {path} is not a directory")
    if not path.exists() and not download:
        raise ConfigError(f"{named_by} {path} does not exist")
    return path
