"""Nothing downloads at test time and nothing is written where it should not be.

The whole suite runs with sockets blocked (pytest-socket's --disable-socket in pyproject's addopts, and in the
gate runs that tests start, through PYTEST_ADDOPTS). A CLI session is watched with a Python audit hook, which
sees every file a Python-level call opens for writing, renames, or deletes."""

import json
import os
import socket
import subprocess
import sys

import pytest
from pytest_socket import SocketBlockedError

from labelflip_models.data import load_dataset
from labelflip_models.errors import DataError
from labelflip_models.gate.config import REFERENCE_BASELINES
from labelflip_models.storage.cache_dir import cache_root

from .conftest import USER_CACHE
from .helpers import GATE_ONLY

pytestmark = pytest.mark.filterwarnings("ignore:A test tried to use socket:UserWarning")


def test_sockets_are_blocked():
    with pytest.raises(SocketBlockedError):
        socket.create_connection(("pypi.org", 443), timeout=5)


def test_gate_runs_started_by_tests_block_sockets_too(pytester_gate):
    pytester_gate.makepyfile("import socket\ndef test_connect():\n    socket.socket()\n")
    pytester_gate.runpytest_subprocess("-p", "no:xdist").assert_outcomes(failed=1)


def test_a_download_without_network_is_a_clear_error_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match=r"downloading mnist into .* failed \(.*socket.*\); without network "
                                        r"access, put the four IDX files in DATA_DIR/mnist/"):
        load_dataset("mnist", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


AUDIT_HOOK = """
import os, sys, traceback

outside = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def watch(allowed):
    # Record every write outside the `allowed` folders in `outside`.
    allowed = [os.path.realpath(p) for p in allowed] + ["/dev"]

    def note(event, path):
        if isinstance(path, int) or path is None:
            return  # a file descriptor: its opening was seen
        path = os.path.realpath(os.fsdecode(path))
        if "__pycache__" in path.split(os.sep):
            return  # Python's own bytecode cache (pytest writes rewritten test modules there)
        if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in allowed):
            where = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[-12:-3]]
            outside.append([event, path, where])

    def hook(event, args):
        flags = (args[2] or 0) if event == "open" else 0
        # Opening a directory "for writing" makes an O_TMPFILE file that is never linked into it (check_out_dir
        # probes writability that way): nothing appears on disk.
        if flags & WRITE_FLAGS and not (isinstance(args[0], (str, bytes)) and os.path.isdir(args[0])):
            note(event, args[0])
        if event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            note(event, args[1])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "os.chown", "os.utime",
                       "shutil.rmtree", "shutil.copyfile", "shutil.move"):
            note(event, args[0])

    sys.addaudithook(hook)
"""

WATCHED_SESSION = AUDIT_HOOK + """
import json

watch(sys.argv[1:4])
from labelflip_models.cli import main

out = sys.argv[2]
for argv in (["train", "--dataset", "mnist-5k"],
             ["attack", "--dataset", "mnist-5k", "--attack", "linf-pgd", "--epsilon", "0.1", "--limit", "300",
              "--out", f"{out}/pgd"],
             ["attack", "--dataset", "mnist-5k", "--attack", "l2-deepfool", "--limit", "100", "--out", f"{out}/df"],
             ["noise", "--dataset", "mnist-5k", "--n", "500", "--out", f"{out}/noise"],
             ["report", out, "--out", f"{out}/report"]):
    assert main(argv) == 0, argv
print(json.dumps(outside))
"""


@pytest.mark.slow
def test_cli_writes_only_to_the_cache_the_output_and_tmp(tmp_path):
    home, cwd, tmp, out = (tmp_path / name for name in ("home", "cwd", "tmp", "out"))
    for directory in (home, cwd, tmp):
        directory.mkdir()
    cache = cache_root()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MPL", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), LABELFLIP_CACHE_DIR=str(cache))
    child = subprocess.run([sys.executable, "-c", WATCHED_SESSION, str(cache), str(out), str(tmp)], cwd=cwd,
                           env=env, capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    outside = json.loads(child.stdout.strip().splitlines()[-1])
    assert outside == [], outside
    # Writes from C code bypass the audit hook; they would land in the home or working directory.
    assert list(home.rglob("*")) == [] and list(cwd.rglob("*")) == []
    assert (out / "report" / "report.json").exists()


WATCHING_CONFTEST = AUDIT_HOOK + """
import json

import pytest

watch(os.environ["WATCH_ALLOWED"].split(os.pathsep))


def pytest_unconfigure(config):
    with open(os.environ["WATCH_LOG"], "w") as log:  # the log itself is the one write we allow outside
        json.dump(outside, log)
"""


@pytest.mark.slow
def test_gate_writes_only_to_the_cache_the_report_and_tmp(pytester_gate, tmp_path_factory, monkeypatch):
    tmp, report = tmp_path_factory.mktemp("tmpdir"), tmp_path_factory.mktemp("gate-report")
    log = tmp_path_factory.mktemp("watch") / "writes.json"
    # TMPDIR holds pytest's basetemp and what torch makes on import (an empty torchinductor_$USER folder).
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("WATCH_ALLOWED", os.pathsep.join(map(str, (USER_CACHE, report, tmp))))
    monkeypatch.setenv("WATCH_LOG", str(log))
    pytester_gate.makeconftest(WATCHING_CONFTEST)
    pytester_gate.makepyfile(test_gate=GATE_ONLY)
    result = pytester_gate.runpytest_subprocess(
        "-p", "no:xdist", "-p", "no:cacheprovider", "--labelflip-profile", "quick", "--labelflip-dataset", "mnist-5k",
        "-k", "fgsm", "--labelflip-report", str(report), "--labelflip-baselines", str(REFERENCE_BASELINES))
    result.assert_outcomes(passed=13, skipped=1)  # attack strength: quick has no AutoAttack case
    # pytest-benchmark, when installed, makes its storage folder in the rootdir at startup: not labelflip's doing.
    benchmarks = str(pytester_gate.path / ".benchmarks")
    writes = [w for w in json.loads(log.read_text()) if w[1] not in (str(log), benchmarks)]
    assert writes == [], "\n".join(map(str, writes))
    assert (report / "report.json").exists()
