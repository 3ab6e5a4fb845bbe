"""Real faults for child processes: SIGKILL at a chosen point of labelflip's file writes or training, and a
disk that fills up. A child runs `install_kill(point)` and then the work; the parent inspects what is left.

Kill points (FILE is a glob on the written file's name):
  step:N             after the N-th optimizer step of a training
  mid-write:FILE     after half of FILE's bytes reached its temp file
  before-rename:FILE with FILE's temp file complete, before it replaces FILE
  after-rename:FILE  right after FILE was replaced
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import labelflip_models.storage.atomic as atomic

REPO = Path(__file__).resolve().parents[1]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _patched_os(**overrides):
    """A stand-in for the `os` module inside labelflip_models.storage.atomic only."""
    fake = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    for name, value in overrides.items():
        setattr(fake, name, value)
    return fake


class _HalfThenFail:
    """A file object whose write stores half of the data, then `fail()`s: a kill, or a full disk."""

    def __init__(self, f, fail) -> None:
        self._f, self._fail = f, fail

    def write(self, data: bytes) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        self._fail()
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _matching_temp_writes(pattern: str, fail) -> None:
    """Make atomic's writes of files matching `pattern` write half their bytes, then call `fail`."""
    real_mkstemp, current = atomic.tempfile.mkstemp, {}

    def mkstemp(*args, **kw):
        fd, tmp = real_mkstemp(*args, **kw)
        current[fd] = fnmatch.fnmatch(kw["prefix"][1:-1], pattern)  # prefix is ".<name>."
        return fd, tmp

    def fdopen(fd, *args, **kw):
        f = os.fdopen(fd, *args, **kw)
        return _HalfThenFail(f, fail) if current.pop(fd, False) else f

    atomic.tempfile = types.SimpleNamespace(mkstemp=mkstemp)
    atomic.os = _patched_os(fdopen=fdopen)


def install_kill(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        steps = []

        def hook(*_):
            steps.append(1)
            if len(steps) == int(arg):
                die()

        register_optimizer_step_post_hook(hook)
    elif kind == "mid-write":
        _matching_temp_writes(arg, die)
    elif kind in ("before-rename", "after-rename"):
        def replace(src, dst):
            hit = fnmatch.fnmatch(Path(dst).name, arg)
            if hit and kind == "before-rename":
                die()
            os.replace(src, dst)
            if hit:
                die()

        atomic.os = _patched_os(replace=replace)
    else:
        raise ValueError(f"unknown kill point {point!r}")


def fill_disk(pattern: str = "*") -> None:
    """Writes of files matching `pattern` run out of space half-way, as on a full disk."""
    def no_space():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    _matching_temp_writes(pattern, no_space)


def run_killed(point: str, body: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `body` (Python source) in a child that SIGKILLs itself at `point`."""
    script = f"from tests.fault_injection import install_kill\ninstall_kill({point!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def temp_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).rglob(f".*{atomic.TEMP_SUFFIX}"))
