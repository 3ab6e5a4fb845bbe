"""Where labelflip keeps what it computes once and reuses (trained models): $LABELFLIP_CACHE_DIR, else the
user's cache dir. Nothing labelflip runs may write anywhere else, except the output dir it is given."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_DIR_ENV = "LABELFLIP_CACHE_DIR"


def cache_root() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("labelflip"))


def keep_matplotlib_in_cache() -> None:
    """Call before matplotlib is imported. It builds a font cache on first use, in ~/.cache/matplotlib unless
    $MPLCONFIGDIR says otherwise; unless the user chose a folder, it gets one inside labelflip's cache."""
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))
