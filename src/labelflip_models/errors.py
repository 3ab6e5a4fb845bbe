"""User-facing errors: the CLI and the pytest plugin print these as one clear message."""


class LabelflipError(Exception):
    """Base class for every error caused by input, data, or configuration rather than a bug."""


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
