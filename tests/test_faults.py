"""Faults injected for real: processes SIGKILLed mid-training and mid-write, corrupt and read-only caches, a full
disk, Ctrl-C during an attack. What is left on disk must be the old version, the new one, or nothing; never half."""

import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import pytest
import torch

from labelflip_models.errors import BaselineError, StorageError
from labelflip_models.gate.baselines import load_baseline, write_baseline
from labelflip_models.gate.config import REFERENCE_BASELINES
from labelflip_models.gate.profiles import Case
from labelflip_models.models.cache import CacheWarning, load_or_train
from labelflip_models.reports import load_runs, write_report
from labelflip_models.runs.results import RESULT_SCHEMA, write_run

from .fault_injection import fill_disk, run_killed, temp_files
from .helpers import TINY_RECIPE, run_cli, tiny_dataset

TRAIN = """
from pathlib import Path
from labelflip_models.models.cache import load_or_train
from tests.helpers import TINY_RECIPE, tiny_dataset
load_or_train(tiny_dataset(), recipe=TINY_RECIPE, root=Path({root!r}))
print("not killed")
"""
# The tiny recipe makes 2 optimizer steps, so step:1 kills mid-training.
TRAINING_KILL_POINTS = ["step:1", "mid-write:*.safetensors", "before-rename:*.safetensors",
                        "after-rename:*.safetensors", "mid-write:*.json", "before-rename:*.json", "after-rename:*.json"]
CASE = Case("quick", "mnist-5k", "fgsm", 0.1)
BASELINES = REFERENCE_BASELINES


def _train(root, **kw):
    return load_or_train(tiny_dataset(), recipe=TINY_RECIPE, root=root, **kw)


@pytest.fixture(scope="module")
def clean_sha(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("clean")).sha256


def _entries(root: Path) -> list[dict]:
    """The complete entries of a cache (a sidecar exists), each checked against its weights."""
    entries = []
    for sidecar_path in (root / "models").rglob("*.json"):
        sidecar = json.loads(sidecar_path.read_text())
        weights = sidecar_path.with_suffix(".safetensors")
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == sidecar["sha256"], "entry with wrong weights"
        entries.append(sidecar)
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("point", TRAINING_KILL_POINTS)
def test_training_killed_leaves_no_entry_or_a_complete_one(tmp_path, point, clean_sha):
    killed = run_killed(point, TRAIN.format(root=str(tmp_path)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    entries = _entries(tmp_path)
    assert len(entries) == (1 if point == "after-rename:*.json" else 0)
    # The next run neither waits for the dead holder's lock nor mistakes its leftovers for damage.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = _train(tmp_path, lock_timeout=30)
    assert again.trained_now == (not entries)
    assert again.sha256 == clean_sha
    assert temp_files(tmp_path) == []
    assert len(_entries(tmp_path)) == 1


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "other_weights", "other_recipe"])
def test_corrupt_entry_warns_in_one_line_and_is_retrained(tmp_path, damage, clean_sha):
    good = _train(tmp_path)
    weights, sidecar_path = good.weights_path, good.weights_path.with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 3])
    elif damage == "other_weights":  # a valid safetensors file of another model, sidecar unchanged
        weights.write_bytes(_train(tmp_path / "other", seed=1).weights_path.read_bytes())
    else:  # the sidecar of an entry trained with another recipe
        sidecar_path.write_text(json.dumps({**sidecar, "key": "0" * 20, "recipe": {"name": "other"}}))
    with pytest.warns(CacheWarning) as caught:
        again = _train(tmp_path)
    (warning,) = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert "\n" not in str(warning.message) and str(weights) in str(warning.message)
    assert again.trained_now and again.sha256 == clean_sha  # retrained, never loaded
    assert len(_entries(tmp_path)) == 1 and not _train(tmp_path).trained_now


def test_full_disk_keeps_the_trained_model_and_caches_nothing(tmp_path, clean_sha, monkeypatch):
    import labelflip_models.storage.atomic as atomic

    monkeypatch.setattr(atomic, "os", atomic.os)  # restored after the test; fill_disk replaces it
    monkeypatch.setattr(atomic, "tempfile", atomic.tempfile)
    fill_disk("*.json")  # the weights fit, the sidecar does not: neither may stay
    with pytest.warns(CacheWarning, match="not cached: cannot write .*No space left on device"):
        trained = _train(tmp_path)
    assert trained.trained_now and trained.sha256 == clean_sha
    assert [p.name for p in (tmp_path / "models" / "tiny").iterdir() if p.suffix != ".lock"] == []


@pytest.fixture
def read_only(tmp_path):
    """Make a directory unwritable for real (chmod for users, the immutable attribute for root)."""
    made = []

    def make(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            directory.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory read-only here (root without chattr support)")
        made.append(directory)
        return directory

    yield make
    for directory in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def test_read_only_cache_still_serves_its_entries(tmp_path, read_only, clean_sha):
    _train(tmp_path)
    read_only(tmp_path / "models" / "tiny")
    loaded = _train(tmp_path)
    assert not loaded.trained_now and loaded.sha256 == clean_sha


def test_read_only_cache_without_the_model_is_a_clear_error(tmp_path, read_only):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    read_only(tmp_path / "models" / "tiny")
    with pytest.raises(StorageError, match="not writable .* holds no valid cw-mnist model for tiny; "
                                           "set \\$LABELFLIP_CACHE_DIR"):
        _train(tmp_path)
    assert list((tmp_path / "models" / "tiny").iterdir()) == []


# --- baselines and reports: killed while writing, each file is the old or the new version --------------------

def _baseline_result(shift: int) -> dict:
    result = json.loads(CASE.baseline_path(BASELINES, ".json").read_text())["result"]
    row = result["flip_matrix"][0]  # move flips between two off-diagonal cells: a different but valid run
    source = max(range(1, len(row)), key=row.__getitem__)
    moved = min(shift, row[source])
    row[source] -= moved
    row[1 if source != 1 else 2] += moved
    return result


def _write_baseline_into(root: Path, shift: int) -> dict[str, bytes]:
    write_baseline(CASE, root, _baseline_result(shift))
    return {s: CASE.baseline_path(root, s).read_bytes() for s in (".csv", ".json")}


BASELINE_WRITE = """
import json
from pathlib import Path
from labelflip_models.gate.baselines import write_baseline
from tests.test_faults import CASE, _baseline_result
write_baseline(CASE, Path({root!r}), _baseline_result(1))
print("not killed")
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-write:*.csv", "before-rename:*.csv", "after-rename:*.csv",
                                   "mid-write:*.json", "before-rename:*.json", "after-rename:*.json"])
def test_regeneration_killed_leaves_old_or_new_files(tmp_path, point):
    new = _write_baseline_into(tmp_path / "expected", 1)
    old = _write_baseline_into(tmp_path / "run", 0)
    assert old != new
    killed = run_killed(point, BASELINE_WRITE.format(root=str(tmp_path / "run")))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    now = {s: CASE.baseline_path(tmp_path / "run", s).read_bytes() for s in (".csv", ".json")}
    assert all(now[s] in (old[s], new[s]) for s in now)
    n, names = sum(map(sum, _baseline_result(0)["flip_matrix"])), _baseline_result(0)["class_names"]
    if now[".csv"] == old[".csv"] or now[".json"] == new[".json"]:
        load_baseline(CASE, tmp_path / "run", names, n)
    else:  # killed between the two renames: the gate refuses the pair instead of gating on half of it
        with pytest.raises(BaselineError, match="does not match"):
            load_baseline(CASE, tmp_path / "run", names, n)
    assert _write_baseline_into(tmp_path / "run", 1) == new  # the next regeneration repairs it


def _runs_dir(tmp_path: Path, attacks: list[str]) -> Path:
    runs = tmp_path / "runs"
    for attack in attacks:
        path = next((BASELINES / "quick" / "mnist-5k").glob(f"{attack}*.json"))
        (runs / attack).mkdir(parents=True)
        # A committed baseline's run, as the current schema writes it (baselines keep the schema they were made in).
        result = json.loads(path.read_text())["result"] | {"schema": RESULT_SCHEMA}
        (runs / attack / "result.json").write_text(json.dumps(result))
    return runs


REPORT_WRITE = """
from pathlib import Path
from labelflip_models.cli import main
main(["report", {runs!r}, "--out", {out!r}])
print("not killed")
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-write:*.png", "after-rename:*.png", "mid-write:summary.md",
                                   "before-rename:report.json", "mid-write:report.json"])
def test_report_killed_leaves_old_or_new_files(tmp_path, point):
    runs = _runs_dir(tmp_path, ["fgsm", "l2-deepfool"])
    write_report(tmp_path / "expected", *load_runs([runs]))
    (runs / "l2-deepfool").rename(tmp_path / "held-back")
    out = tmp_path / "out"
    write_report(out, *load_runs([runs]))  # the old report, of one run
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "held-back").rename(runs / "l2-deepfool")
    new = {p.relative_to(tmp_path / "expected"): p.read_bytes()
           for p in (tmp_path / "expected").rglob("*") if p.is_file()}
    killed = run_killed(point, REPORT_WRITE.format(runs=str(runs), out=str(out)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for path in (p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        rel = path.relative_to(out)
        assert path.read_bytes() in (old.get(rel), new[rel]), rel
    # report.json goes last: it is the new one only if everything else is too.
    if (out / "report.json").read_bytes() == new[Path("report.json")]:
        assert all((out / rel).read_bytes() == data for rel, data in new.items())


def test_full_disk_while_writing_a_report_replaces_nothing(tmp_path, monkeypatch):
    import labelflip_models.storage.atomic as atomic

    runs = _runs_dir(tmp_path, ["fgsm", "l2-deepfool"])
    out = tmp_path / "out"
    monkeypatch.setattr(atomic, "os", atomic.os)
    monkeypatch.setattr(atomic, "tempfile", atomic.tempfile)
    fill_disk("report.html")
    with pytest.raises(StorageError, match="cannot write .*report.html \\(No space left on device\\); no file"):
        write_report(out, *load_runs([runs]))
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_full_disk_while_writing_a_run_keeps_the_old_run(tmp_path, monkeypatch):
    import labelflip_models.storage.atomic as atomic

    old, new = _baseline_result(0), _baseline_result(1)
    write_run(tmp_path, old)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(atomic, "os", atomic.os)
    monkeypatch.setattr(atomic, "tempfile", atomic.tempfile)
    fill_disk("result.json")  # flip_matrix.csv fits, result.json does not: neither may be replaced
    with pytest.raises(StorageError, match="result.json \\(No space left on device\\); no file was replaced"):
        write_run(tmp_path, new)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_report_into_a_read_only_dir_is_a_clear_error(tmp_path, read_only, capsys):
    runs = _runs_dir(tmp_path, ["fgsm"])
    out = read_only(tmp_path / "out")
    rc, _, err = run_cli(capsys, ["report", str(runs), "--out", str(out)])
    assert rc == 2 and f"labelflip: error: output directory {out} is not writable" in err
    assert list(out.iterdir()) == []


# --- Ctrl-C --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_during_an_attack_exits_cleanly_and_writes_nothing(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "model.pt")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "labelflip_models.cli", "attack", "--dataset", "mnist-5k", "--model",
            str(tmp_path / "model.pt"), "--attack", "linf-pgd", "--epsilon", "0.1", "--param", "steps=100000",
            "--batch-size", "8", "--out", str(out)]
    # On a terminal, as a user would press Ctrl-C: the attack shows its progress bar there.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    # Ctrl-C as in a user's shell: a disposition inherited from this test process (an ignored SIGINT survives
    # exec, and Python then never installs its KeyboardInterrupt handler) must not decide the outcome.
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(follower)
    try:
        seen = _read_until(leader, b"linf-pgd", timeout=120)
        assert b"linf-pgd" in seen, seen.decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        # Keep reading while it winds down: a child whose progress bar fills the terminal's buffer blocks in a
        # write, and Python only acts on the interrupt once that write returns.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            seen += _read_until(leader, b"\x00", timeout=1)
        rc = proc.wait(timeout=5)
        seen += _read_until(leader, b"\x00", timeout=5)
    finally:
        proc.kill()  # a child that ignored Ctrl-C must not outlive the test
        os.close(leader)
    assert rc == 130
    text = seen.decode(errors="replace")
    assert "labelflip: interrupted; no partial results were written" in text and "Traceback" not in text
    assert not out.exists()


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen
