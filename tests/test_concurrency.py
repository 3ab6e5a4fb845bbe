"""Many processes, one model cache: exactly one training, no deadlock, no stale lock after a killed holder,
lock timeouts with a clear message, and gate runs that share a cache at the same time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelflip_models.errors import ConfigError, LabelflipError
from labelflip_models.gate.config import REFERENCE_BASELINES
from labelflip_models.models.cache import load_or_train
from labelflip_models.models.train import Recipe
from labelflip_models.storage.locks import LOCK_TIMEOUT_ENV, lock_timeout_s

from .fault_injection import REPO
from .helpers import GATE_ONLY, tiny_dataset

PROCESSES = 8
# Long enough (~2 s) that all processes ask while the first is still training.
SLOW_RECIPE = Recipe("tiny-slow", epochs=4, batch_size=32, lr=1e-3)
SLOW_DATA = dict(n_train=1024, n_test=40)

CHILD = """
import sys, time
from pathlib import Path
from labelflip_models.models.cache import load_or_train
from tests.helpers import tiny_dataset
from tests.test_concurrency import SLOW_DATA, SLOW_RECIPE
root, barrier, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
data = tiny_dataset(**SLOW_DATA)
(barrier / str(__import__("os").getpid())).touch()
while len(list(barrier.iterdir())) < n:  # start together, so the lock is really contended
    time.sleep(0.01)
start = time.perf_counter()
m = load_or_train(data, recipe=SLOW_RECIPE, root=root)
print("TRAINED" if m.trained_now else "LOADED", m.sha256, round(time.perf_counter() - start, 2))
"""

# A training that announces itself (a marker file) and then hangs: a lock holder to kill or to time out on.
HANGING_HOLDER = """
import sys, time
from pathlib import Path
from torch.optim.optimizer import register_optimizer_step_post_hook
from labelflip_models.models.cache import load_or_train
from tests.helpers import tiny_dataset
from tests.test_concurrency import SLOW_DATA, SLOW_RECIPE
marker = Path(sys.argv[2])
def hang(*_):
    marker.touch()
    time.sleep(600)
register_optimizer_step_post_hook(hang)
load_or_train(tiny_dataset(**SLOW_DATA), recipe=SLOW_RECIPE, root=Path(sys.argv[1]))
"""


def _slow_train(root, **kw):
    return load_or_train(tiny_dataset(**SLOW_DATA), recipe=SLOW_RECIPE, root=root, **kw)


@pytest.mark.slow
def test_eight_processes_train_exactly_once(tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "cache"), str(barrier), str(PROCESSES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(PROCESSES)]
    results = [p.communicate(timeout=600) for p in procs]
    wall = time.perf_counter() - start
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    outputs = [out.split() for out, _ in results]
    assert sorted(o[0] for o in outputs) == ["LOADED"] * (PROCESSES - 1) + ["TRAINED"]
    assert len({o[1] for o in outputs}) == 1
    trained_in = next(float(o[2]) for o in outputs if o[0] == "TRAINED")
    waited = [float(o[2]) for o in outputs if o[0] == "LOADED"]
    # The losers really waited on the winner's lock (at least one for most of its training), then loaded.
    assert max(waited) > 0.5 * trained_in
    print(f"{PROCESSES} processes: 1 training ({trained_in:.1f} s), longest wait {max(waited):.1f} s, "
          f"wall {wall:.1f} s")


def _start_holder(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", HANGING_HOLDER, str(tmp_path / "cache"), str(marker)],
                              cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        holder.kill()
        pytest.fail(f"the lock holder never started training: {holder.communicate()[1][-2000:]}")
    return holder, marker


@pytest.mark.slow
def test_lock_of_a_killed_holder_is_not_stale(tmp_path):
    holder, _ = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    # A lock still held would raise after 5 s; the killed holder left no entry, so we train.
    trained = _slow_train(tmp_path / "cache", lock_timeout=5)
    assert trained.trained_now


@pytest.mark.slow
def test_lock_timeout_names_the_lock_and_the_setting(tmp_path, monkeypatch):
    holder, _ = _start_holder(tmp_path)
    try:
        monkeypatch.setenv(LOCK_TIMEOUT_ENV, "1.5")
        start = time.perf_counter()
        with pytest.raises(LabelflipError, match=r"waited 1.5 s for .*cw-mnist-\w+\.lock, held by another process "
                                                 r"training the same model; raise \$LABELFLIP_LOCK_TIMEOUT_S"):
            _slow_train(tmp_path / "cache")
        assert time.perf_counter() - start >= 1.5  # it waited for the lock before giving up
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan", "inf"])
def test_bad_lock_timeout_setting(monkeypatch, value):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=rf"\$LABELFLIP_LOCK_TIMEOUT_S must be a positive number of seconds, "
                                          rf"got '{value}'"):
        lock_timeout_s()


# --- the gate: pytest -n 8, and two gate runs at once, on one fresh cache ----------------------------------

COUNTING_CONFTEST = """
import os

import labelflip_models.models.cache as model_cache

_train = model_cache.train


def counting_train(*args, **kwargs):
    with open(os.environ["TRAININGS_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    return _train(*args, **kwargs)


model_cache.train = counting_train
"""

MODEL_USERS = """
import json, os

import pytest

from labelflip_models.models.cache import model_sha256


@pytest.mark.parametrize("i", range(16))
def test_uses_the_reference_model(i, labelflip_dataset, labelflip_model):
    model = labelflip_model(labelflip_dataset("mnist-5k"))
    with open(os.environ["MODELS_LOG"], "a") as log:
        log.write(json.dumps([os.getpid(), model_sha256(model)]) + "\\n")
"""


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELFLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TRAININGS_LOG", str(tmp_path / "trainings.log"))
    monkeypatch.setenv("MODELS_LOG", str(tmp_path / "models.log"))
    return tmp_path


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_pytest_n8_trains_the_reference_model_once(pytester_gate, fresh_cache):
    # Seed 1: the seed-0 reference weights ship with labelflip and are never trained.
    pytester_gate.makeconftest(COUNTING_CONFTEST)
    pytester_gate.makepyfile(test_models=MODEL_USERS)
    start = time.perf_counter()
    result = pytester_gate.runpytest_subprocess("-n", str(PROCESSES), "-p", "no:cacheprovider", "--labelflip-seed", "1")
    wall = time.perf_counter() - start
    result.assert_outcomes(passed=16)
    users = [json.loads(line) for line in (fresh_cache / "models.log").read_text().splitlines()]
    assert len({pid for pid, _ in users}) == PROCESSES  # every worker asked for the model
    assert len({sha for _, sha in users}) == 1
    assert len(_lines(fresh_cache / "trainings.log")) == 1
    print(f"pytest -n {PROCESSES}: 1 training for {PROCESSES} workers, wall {wall:.1f} s")


@pytest.mark.slow
def test_two_gate_runs_at_the_same_time_load_the_shipped_weights(pytester_gate, fresh_cache):
    pytester_gate.makeconftest(COUNTING_CONFTEST)
    pytester_gate.makepyfile(test_gate=GATE_ONLY)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
            "--labelflip-profile", "quick", "--labelflip-dataset", "mnist-5k", "-k", "fgsm",
            "--labelflip-baselines", str(REFERENCE_BASELINES)]
    env = {**os.environ, "PYTHONPATH": ""}
    start = time.perf_counter()
    runs = [subprocess.Popen(argv, cwd=pytester_gate.path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    wall = time.perf_counter() - start
    assert [run.returncode for run in runs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert all(" passed" in o and "failed" not in o for o in outputs)
    assert _lines(fresh_cache / "trainings.log") == []  # nothing trained, nothing cached
    print(f"two gate runs at once: both passed, no training, wall {wall:.1f} s")
