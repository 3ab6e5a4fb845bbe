"""How long labelflip waits for a file lock held by another process (a training, or a gate case's attack)."""

from __future__ import annotations

import math
import os

from filelock import BaseFileLock

from ..errors import ConfigError, LabelflipError

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


def lock_timeout_error(lock: BaseFileLock, holder: str) -> LabelflipError:
    """The error for a wait on `lock` that ran out; `holder` says what the process holding it is doing."""
    return LabelflipError(f"waited {lock.timeout:g} s for {lock.lock_file}, held by {holder}; "
                          f"raise ${LOCK_TIMEOUT_ENV} if that takes longer")
