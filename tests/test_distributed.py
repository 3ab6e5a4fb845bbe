"""Runs computed over several processes (torchrun, gloo on this CPU) are the runs one process computes; a killed
rank is survived by a restart or a rerun; the gate checks such runs without attacking, and refuses another
model's.

Every process runs one thread (torchrun's default, and the single-process runs here are given the same): fp32
reductions summed in another order by more threads can move a minimal norm by an ulp.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labelflip_models.attacks import AttackResult, make_attack, run_attack
from labelflip_models.errors import ConfigError
from labelflip_models.runs.distributed import World, load_chunk, rank_device, save_chunk, shard, world_from_env

from .fault_injection import REPO

BIN = Path(sys.executable).parent
# A fixed-ε attack with random starts and a minimal attack, each 500 images: two batches of the CPU's 256.
CASES = ("fashion-mnist-linf-pgd-eps0.05", "fashion-mnist-l2-deepfool-min")


@pytest.mark.parametrize("n, batch", [(500, 256), (10, 3), (1, 4), (1000, 7)])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_cover_every_image_once_in_whole_batches(n, batch, size):
    ranges = [shard(n, batch, World(rank, size)) for rank in range(size)]
    assert [i for r in ranges for i in r] == list(range(n))  # contiguous, in order, no padding or repeats
    assert all(r.start % batch == 0 for r in ranges if len(r))
    sizes = sorted(len(r) for r in ranges)
    assert sizes[-1] - sizes[0] <= batch or n < batch * size


def test_world_comes_from_torchrun_or_slurm():
    master = {"MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert world_from_env({}) == World()
    assert world_from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", **master}) == World(2, 4, 0)
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", **master}
    assert world_from_env(slurm) == World(5, 8, 1)
    # A batch script or salloc shell sets SLURM_NTASKS but is no srun step: a plain command there is one process.
    assert world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", **master}) == World()
    with pytest.raises(ConfigError, match="MASTER_PORT not set: export MASTER_ADDR"):
        world_from_env({k: v for k, v in slurm.items() if k != "MASTER_PORT"})
    with pytest.raises(ConfigError, match="must be whole numbers"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="rank 3 is not one of the 2 processes"):
        world_from_env({"RANK": "3", "WORLD_SIZE": "2", **master})
    with pytest.raises(ConfigError, match="WORLD_SIZE is set but RANK is not"):
        world_from_env({"WORLD_SIZE": "2"})


def test_one_gpu_for_every_process_is_refused():
    assert rank_device(World(1, 4, 1), "cuda") == "cuda:1"
    assert rank_device(World(1, 4, 1), "cpu") == "cpu" and rank_device(World(), "cuda:3") == "cuda:3"
    with pytest.raises(ConfigError, match="would put every process on one GPU"):
        rank_device(World(1, 4, 1), "cuda:0")


def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return model, x, model(x).argmax(1).detach()


@pytest.mark.parametrize("name, epsilon", [("linf-pgd", 0.1), ("l2-pgd", 1.0), ("l2-deepfool", None)])
def test_an_images_result_depends_on_its_id_not_its_batch_or_neighbours(name, epsilon):
    model, x, y = _tiny()
    attack = make_attack(name, steps=5)
    whole = run_attack(model, x, y, attack, epsilon, batch_size=16, engine="native-fp32")
    other_batches = run_attack(model, x, y, attack, epsilon, batch_size=7, engine="native-fp32")
    part = run_attack(model, x[10:25], y[10:25], attack, epsilon, batch_size=4, engine="native-fp32",
                      ids=torch.arange(10, 25))
    # Within float noise of batched matrix products: a start drawn elsewhere moves pixels by up to ε.
    torch.testing.assert_close(whole.clipped, other_batches.clipped, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.clipped[10:25], part.clipped, rtol=0, atol=1e-6)
    if epsilon is not None:  # another seed, or other ids for the same images, start elsewhere
        reseeded = run_attack(model, x, y, attack, epsilon, seed=1, engine="native-fp32")
        renamed = run_attack(model, x[10:25], y[10:25], attack, epsilon, engine="native-fp32", ids=torch.arange(15))
        assert (whole.clipped - reseeded.clipped).abs().max() > 1e-3
        assert (whole.clipped[10:25] - renamed.clipped).abs().max() > 1e-3


def test_foolbox_engine_starts_where_the_native_kernel_does():
    model, x, y = _tiny()
    attack = make_attack("linf-pgd", steps=3)
    native = run_attack(model, x, y, attack, 0.1, engine="native-fp32", ids=torch.arange(100, 140))
    foolbox = run_attack(model, x, y, attack, 0.1, engine="foolbox", ids=torch.arange(100, 140))
    torch.testing.assert_close(native.clipped, foolbox.clipped, rtol=0, atol=1e-6)
    # and not where Foolbox would have drawn its own start
    unseeded = make_attack("linf-pgd", steps=3).foolbox()
    import foolbox as fb

    own, _, _ = unseeded(fb.PyTorchModel(model, bounds=(0, 1)), x, fb.criteria.Misclassification(y), epsilons=0.1)
    assert (own - foolbox.clipped).abs().max() > 1e-3


@pytest.mark.parametrize("reduced", [False, True])
def test_a_finished_chunk_reads_back_as_it_was(tmp_path, reduced):
    model, x, y = _tiny()
    part = run_attack(model, x, y, make_attack("linf-autoattack"), 0.1, engine="native-fp32")
    part = part.reduced() if reduced else part
    ids = torch.arange(100, 140)
    save_chunk(part, ids, tmp_path / "chunk.safetensors")
    back = load_chunk(tmp_path / "chunk.safetensors", ids)
    assert load_chunk(tmp_path / "missing.safetensors", ids) is None
    assert load_chunk(tmp_path / "chunk.safetensors", ids + 1) is None  # a chunk of other images is not taken up
    assert isinstance(back, AttackResult) and back.params == part.params and back.epsilon == part.epsilon
    for name in ("labels", "success", "attacked", "clean_pred", "adv_pred", "broken_by", "norms", "linf_norms"):
        assert torch.equal(getattr(back, name), getattr(part, name)), name
    assert back.kept == part.kept and back.adversarial_range == part.adversarial_range


# ------------------------------------------------------------------------------------------------- torchrun


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            **extra}


def _run_args(out: Path) -> list[str]:
    cases = [arg for case in CASES for arg in ("--case", case)]
    return ["run", "--profile", "smoke", "--dataset", "fashion-mnist", *cases, "--out", str(out)]


def _torchrun(nproc: int, script: list[str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", *extra, *script],
                          capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)


def _single(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelflip_models.cli", *_run_args(out)], capture_output=True,
                          text=True, timeout=600, env=_env(), cwd=REPO)


def _same_runs(a: Path, b: Path) -> None:
    for case in CASES:
        results = [json.loads((d / case / "result.json").read_text()) for d in (a, b)]
        assert results[0]["flip_fraction"]["count"] > 0
        first, second = ({k: v for k, v in r.items() if k != "provenance"} for r in results)
        assert first == second, case
        assert (a / case / "run.safetensors").read_bytes() == (b / case / "run.safetensors").read_bytes(), case
        assert not list((b / case).glob(".chunks*"))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "runs"
    done = _single(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 3])
def test_torchrun_computes_the_single_process_runs(single, tmp_path, nproc):
    done = _torchrun(nproc, ["--no-python", str(BIN / "labelflip"), *_run_args(tmp_path / "runs")])
    assert done.returncode == 0, done.stderr[-3000:]
    _same_runs(single, tmp_path / "runs")
    assert f"over {nproc} processes" in done.stderr


KILLED = """
import os, sys
from tests.fault_injection import install_kill
point = sys.argv.pop(1)
if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
    install_kill(point)
from labelflip_models.cli import main
sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("point, recover", [("after-rename:chunk-*", "restart"), ("mid-write:chunk-*", "rerun")])
def test_a_killed_rank_is_survived_and_changes_nothing(single, tmp_path, point, recover):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    out = tmp_path / "runs"
    restarts = ["--max-restarts=1"] if recover == "restart" else []
    done = _torchrun(2, [str(script), point, *_run_args(out)], *restarts)
    if recover == "rerun":
        assert done.returncode != 0 and not (out / CASES[0] / "result.json").exists()
        done = _torchrun(2, ["--no-python", str(BIN / "labelflip"), *_run_args(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    _same_runs(single, out)


# ------------------------------------------------------------------------------------------ gating from runs

COUNTER = """
import json, os
import torch

calls = {"forward": 0}


def _count(module, args, output):
    if type(module).__name__ == "Normalized":  # the reference model itself, not its layers
        calls["forward"] += 1


def pytest_configure(config):
    torch.nn.modules.module.register_module_forward_hook(_count)


def pytest_sessionfinish(session):
    with open(os.environ["FORWARD_COUNT"], "w") as f:
        json.dump(calls, f)
"""


def _gate(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, int]:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "forward_counter.py").write_text(COUNTER)
    count = tmp_path / "count.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "robustness_tests", "-p", "no:xdist", "-p", "forward_counter", "-q",
         "-p", "no:cacheprovider", "-k", f"{CASES[0]} and not attack_strength", *options],
        capture_output=True, text=True, timeout=900, cwd=REPO,
        env=_env(PYTHONPATH=f"{tmp_path / 'plugins'}{os.pathsep}{REPO}", FORWARD_COUNT=str(count)))
    return done, json.loads(count.read_text())["forward"] if count.exists() else -1


@pytest.mark.slow
def test_the_gate_checks_precomputed_runs_without_attacking(single, tmp_path):
    from_runs, forwards = _gate(tmp_path, "--labelflip-runs", str(single), "--labelflip-require-runs")
    assert from_runs.returncode == 0, from_runs.stdout[-3000:]
    assert " passed" in from_runs.stdout and forwards == 0
    in_session, forwards = _gate(tmp_path)  # the counter does count: the same tests computing their run
    assert in_session.returncode == 0 and forwards > 0


@pytest.mark.slow
def test_the_gate_refuses_runs_of_another_model_and_missing_runs_it_must_not_compute(single, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(single, runs)
    result_path = runs / CASES[0] / "result.json"
    result = json.loads(result_path.read_text())
    result["model"]["sha256"] = "0" * 64
    result_path.write_text(json.dumps(result))
    refused, _ = _gate(tmp_path, "--labelflip-runs", str(runs))
    assert refused.returncode == 1
    assert f"--labelflip-runs: {runs / CASES[0]} is not this case's run: computed with model sha256 000000000000…" \
           in refused.stdout
    # A case folder that lost its result.json (a writer killed before the last file) is no run.
    result_path.unlink()
    assert (runs / CASES[0] / "run.safetensors").exists()
    missing, forwards = _gate(tmp_path, "--labelflip-runs", str(runs), "--labelflip-require-runs")
    assert missing.returncode == 1 and forwards == 0
    assert f"--labelflip-require-runs: {runs} holds no complete run of {CASES[0]}" in missing.stdout


@pytest.mark.parametrize("requested, described, kernel, ok", [
    ("auto", "labelflip native (bf16 autocast)", True, True), ("auto", "labelflip native (fp32)", True, True),
    ("auto", "foolbox 3.3.4 (fp32)", True, False), ("auto", "foolbox 3.3.4 (fp32)", False, True),
    ("reference", "labelflip native (fp32)", True, False), ("foolbox", "foolbox 3.3.4 (fp32)", True, True),
    ("native-fp32", "labelflip native (bf16 autocast)", True, False), ("native", "labelflip native (fp32)", True, True),
    ("native", "foolbox 3.3.4 (fp32)", False, True)])
def test_a_runs_engine_is_judged_where_the_engine_setting_decides(requested, described, kernel, ok):
    from labelflip_models.gate.runs_dir import engine_matches

    assert engine_matches(requested, described, kernel) is ok


@pytest.mark.slow
def test_a_stored_run_stands_only_for_the_run_the_gate_would_compute(single, tmp_path):
    from labelflip_models.attacks import Bounds
    from labelflip_models.data import load_dataset
    from labelflip_models.gate.profiles import Case
    from labelflip_models.gate.runs_dir import stored_run

    data = load_dataset("fashion-mnist")
    sha = json.loads((single / CASES[0] / "result.json").read_text())["model"]["sha256"]
    case = Case("smoke", "fashion-mnist", "linf-pgd", 0.05)
    assert stored_run(single, case, data, sha, seed=0).indices.shape == (500,)
    assert stored_run(single, Case("smoke", "fashion-mnist", "linf-pgd", 0.1), data, sha, seed=0) is None
    for change, says in [({"seed": 1}, "seed 0, not 1"), ({"bounds": Bounds(0, 255)}, r"not ε 12.75 in \[0, 255\]"),
                         ({"engine": "reference"}, "not by engine reference"),
                         ({"case": Case("paper", "fashion-mnist", "linf-pgd", 0.05)}, "other test images")]:
        settings = {"seed": 0, **change}
        with pytest.raises(ConfigError, match=says):
            stored_run(single, settings.pop("case", case), data, sha, **settings)
    # A run stored before an upgrade changed the profile's attack settings (L∞ PGD's step) is not taken for the new.
    shutil.copytree(single / CASES[0], tmp_path / CASES[0])
    path = tmp_path / CASES[0] / "result.json"
    result = json.loads(path.read_text())
    result["attack"]["rel_stepsize"] = 0.01 / 0.3
    path.write_text(json.dumps(result))
    says = r"attack settings rel_stepsize=0\.0333\d*, not the profile's rel_stepsize=0\.1"
    with pytest.raises(ConfigError, match=says):
        stored_run(tmp_path, case, data, sha, seed=0)


@pytest.mark.parametrize("argv, says", [
    (["--case", "no-such-case"], "--case no-such-case: no case of profile smoke matches"),
    (["--model", "m.pt"], "--model needs --dataset"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--device", "cuda:1"], "would put every process on one GPU"),
])
def test_labelflip_run_refuses_bad_options_in_one_line(capsys, tmp_path, monkeypatch, argv, says):
    from .helpers import run_cli

    if "--device" in argv:  # as torchrun would start it: rank 1 of 2
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", "29500")
        monkeypatch.setattr("labelflip_models.cli.resolve_device", lambda device, start=True: device)
    rc, out, err = run_cli(capsys, ["run", "--out", str(tmp_path / "runs"), *argv])
    assert rc == 2 and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
