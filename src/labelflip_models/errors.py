"""User-facing errors: the CLI and the pytest plugin print these as one clear message.

Library code names its own parameters in backticks (`arch`, `data_dir`); it knows nothing of command lines.
A front end shows the message with its own option names through `LabelflipError.phrased`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


class LabelflipError(Exception):
    """Base class for every error caused by input, data, or configuration rather than a bug."""

    def phrased(self, options: Mapping[str, str]) -> str:
        """The message with each backticked parameter that `options` maps replaced by the front end's option."""
        return _PARAMETER.sub(lambda m: options.get(m.group(1), m.group(0)), str(self))


class DataError(LabelflipError):
    """A dataset is missing, corrupt, or not in the expected format."""


class DataNotFound(DataError):
    """A dataset is not present on this machine (as opposed to present but corrupt)."""


class ConfigError(LabelflipError):
    """An argument, option or profile value is invalid."""


class BaselineError(LabelflipError):
    """A committed baseline is missing, malformed, or does not match the run."""


class StorageError(LabelflipError):
    """A file could not be written (disk full, read-only, no permission); nothing partial was left behind."""
