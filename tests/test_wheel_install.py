"""labelflip in someone else's repository, installed from its wheel: a folder with nothing but a TorchScript model of
MNIST-5k and an empty baseline folder gets the gate with `labelflip init`, records baselines, passes, and fails with
an explanation when a weakened model is swapped in.

The wheel is built from a copy of the sources (offline, without build isolation) and installed, without its
dependencies, into a fresh venv that borrows this environment's packages (torch, foolbox, mlxtend...) through a .pth
file. labelflip itself comes only from the wheel: the test checks where it is imported from.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from labelflip_models.data import load_dataset
from labelflip_models.gate.baselines import BASELINE_SCHEMA
from labelflip_models.gate.config import REFERENCE_BASELINES
from labelflip_models.models.cache import load_or_train

from .helpers import WEIGHT_NOISE, weakened

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


def _run(argv, cwd, env, timeout=900):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, venv bin folder, env) with labelflip installed from a freshly built wheel."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    rc, out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(root / "dist"), str(source)], root, env)
    assert rc == 0, out
    wheel = next((root / "dist").glob("labelflip-*.whl"))
    target = root / "venv"
    venv.create(target, with_pip=False)
    py = target / "bin" / "python"
    purelib = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                           text=True).strip())
    # This environment's packages after the venv's own: a .pth line adds the folder without running its .pth files,
    # so the editable labelflip of this checkout stays out of sight.
    (purelib / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    rc, out = _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], root, env)
    assert rc == 0, out
    where = subprocess.check_output([py, "-c", "import labelflip_models; print(labelflip_models.__file__)"], text=True)
    assert Path(where.strip()).is_relative_to(purelib), where
    # The reference models' baselines are package data.
    listing = "from labelflip_models.gate.config import REFERENCE_BASELINES as r; " \
              "print(sorted(p.relative_to(r).as_posix() for p in r.rglob('*') if p.is_file()))"
    assert subprocess.check_output([py, "-c", listing], text=True).strip() == str(sorted(
        p.relative_to(REFERENCE_BASELINES).as_posix() for p in REFERENCE_BASELINES.rglob("*") if p.is_file()))
    return py, target / "bin", env


def _script(model: torch.nn.Module, path: Path) -> None:
    torch.jit.trace(model.cpu().eval(), torch.zeros(1, 1, 28, 28)).save(str(path))


def test_gate_from_the_wheel_in_a_fresh_repository(installed, tmp_path):
    py, bin_dir, env = installed
    data = load_dataset("mnist-5k")
    model = load_or_train(data, seed=0, device="cpu").model
    repo = tmp_path / "user-repo"
    repo.mkdir()
    (repo / "baselines").mkdir()
    _script(model, repo / "model.pt")

    rc, out = _run([bin_dir / "labelflip", "init", "--model", "model.pt", "--dataset", "mnist-5k",
                    "--baselines", "baselines", "--profile", "quick"], repo, env)
    assert rc == 0, out
    section = out[out.index("[tool.pytest.ini_options]"):out.index("\n\n", out.index("[tool.pytest.ini_options]"))]
    (repo / "pyproject.toml").write_text(section + "\n")
    assert sorted(p.name for p in repo.iterdir()) == ["baselines", "model.pt", "pyproject.toml", "robustness_tests"]
    pytest_ = [py, "-m", "pytest", "robustness_tests", "-p", "no:cacheprovider"]

    # The installed reference baselines are not regenerated in place.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, out = _run([py, "-m", "pytest", "--pyargs", "labelflip_models.gate.tests", "--labelflip-regen"], elsewhere, env)
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "name the directory to write with --labelflip-baselines DIR" in out, out

    rc, out = _run(pytest_ + ["--labelflip-regen"], repo, env)
    assert rc == 0, out
    assert sorted(p.name for p in (repo / "baselines" / "quick" / "mnist-5k").iterdir()) == [
        "fgsm-eps0.1.csv", "fgsm-eps0.1.images.csv", "fgsm-eps0.1.json", "l2-deepfool-min.csv",
        "l2-deepfool-min.images.csv", "l2-deepfool-min.json", "linf-pgd-eps0.1.csv", "linf-pgd-eps0.1.images.csv",
        "linf-pgd-eps0.1.json", "white-noise.json"]

    rc, out = _run(pytest_ + ["-n", "2", "--labelflip-strict"], repo, env)
    assert rc == 0 and re.search(r"\b56 passed", out), out
    assert "labelflip gate" not in out

    noisy = weakened(load_or_train(data, seed=0, device="cpu").model, WEIGHT_NOISE)
    _script(noisy, repo / "model.pt")
    junit = tmp_path / "junit.xml"
    rc, out = _run(pytest_ + ["-n", "2", f"--junitxml={junit}", "--labelflip-model-mismatch", "warn"], repo, env)
    assert rc == 1, out
    failed = re.findall(r"^FAILED \S+::(test_class_flip_rate\[mnist-5k-([a-z0-9.-]+?)-(\d)\])", out, re.M)
    assert len(failed) >= 2, out  # as in test_gate_can_fail
    # Obtained files beside the baselines, in their schema; the terminal section; the JUnit properties.
    stems = {stem for _, stem, _ in failed}
    for stem in stems:
        obtained = json.loads((repo / "baselines" / "quick" / "mnist-5k" / f"{stem}.obtained.json").read_text())
        assert obtained["schema"] == BASELINE_SCHEMA
    assert "= labelflip gate =" in out and "class(es) less robust, largest rise first" in out
    properties = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
                  for c in ET.parse(junit).getroot().iter("testcase")}
    for name, _, digit in failed:
        assert properties[name]["labelflip_passed"] == "False" and properties[name]["labelflip_class"] == digit
