"""How long labelflip waits for a file lock held by another process (a training, or a gate case's attack)."""

from __future__ import annotations

import math
import os

from .errors import ConfigError

LOCK_TIMEOUT_ENV = "LABELFLIP_LOCK_TIMEOUT_S"
LOCK_TIMEOUT_S = 3600.0


def lock_timeout_s() -> float:
    """How long to wait for another process's lock: $LABELFLIP_LOCK_TIMEOUT_S, else an hour (a full training)."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "")
    if not text:
        return LOCK_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"${LOCK_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value
