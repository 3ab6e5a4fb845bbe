"""The GPU check's flow, run here where no GPU is lent: scripts/gpu-bundle builds the bundle against the real package
index, `gpu-bundle --check` and `gpu-check --dry-run` accept it, and gpu-check installs it, --no-index, into a
throwaway venv layered on a stand-in of the GPU machine's image: this environment's torch and the other packages the
image has, and nothing else. labelflip then runs from that venv.

Like a device call, it works on a copy of the working tree. It needs the package index (as .ci/run does).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .test_gpu_check import gb

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list, cwd: Path, env: dict, timeout: float = 900) -> tuple[int, str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def _copy_of_the_working_tree(dest: Path) -> Path:
    """Tracked files and untracked ones git does not ignore, in a git repository of their own (gpu-bundle sizes the
    tree that travels with `git ls-files`)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def _image_packages() -> list[importlib.metadata.Distribution]:
    """This environment's distributions that the GPU machine's image has, with what they need here: the image is
    whole, though its versions (and so their requirements) may differ from this environment's."""
    dists = {gb.canonical(d.metadata["Name"]): d
             for d in importlib.metadata.distributions(path=[sysconfig.get_path("purelib")])}
    todo = [n for n in dists if gb.carried_elsewhere(n) and n not in gb.DEV_ONLY]
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in found or name not in dists:
            continue
        found.add(name)
        for line in dists[name].requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(gb.canonical(req.name))
    return [dists[n] for n in sorted(found)]


def _image_stand_in(root: Path, bundled: set[str]) -> Path:
    """A venv that sees, linked into one folder, this environment's packages of the GPU machine's image (torch among
    them) and none that the bundle carries: a wheel missing from the bundle shows here as on the GPU machine."""
    packages = root / "image-packages" / "site-packages"
    packages.mkdir(parents=True)
    linked = set()
    for dist in _image_packages():
        if gb.canonical(dist.metadata["Name"]) in bundled or dist.files is None:
            continue
        for top in {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}:
            if top not in linked and dist.locate_file(top).exists():
                (packages / top).symlink_to(dist.locate_file(top))
                linked.add(top)
    image = root / "image"
    venv.create(image, with_pip=False)
    purelib = subprocess.check_output([image / "bin" / "python", "-c",
                                       "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip()
    Path(purelib, "image.pth").write_text(f"import site; site.addsitedir({str(packages)!r})\n")
    return image / "bin" / "python"


def test_bundle_built_from_the_index_installs_and_runs_on_a_stand_in_of_the_gpu_image(tmp_path):
    tree = _copy_of_the_working_tree(tmp_path / "tree")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LABELFLIP_"))}
    env.update(LABELFLIP_CACHE_DIR=str(tmp_path / "cache"), MPLBACKEND="Agg")
    bundle = tree / ".gpu-bundle"

    rc, out = _run([sys.executable, tree / "scripts" / "gpu-bundle"], tree, env)
    assert rc == 0, out
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl"))
    assert not [w for w in wheels if w.startswith(("torch-", "torchvision-", "nvidia", "cuda", "numpy-"))], wheels
    assert {"foolbox", "pyautoattack", "torchattacks", "mlxtend", "pytest_socket"} <= {w.split("-")[0] for w in wheels}
    assert "of the 64 MiB a device call carries" in out

    rc, out = _run([sys.executable, tree / "scripts" / "gpu-bundle", "--check"], tree, env)
    assert rc == 0 and ": usable" in out, out
    rc, out = _run([sys.executable, tree / "scripts" / "gpu-check", "--dry-run", "--out", tmp_path / "dry"], tree, env)
    assert rc == 0 and "foolbox 3" in out, out

    manifest = json.loads((bundle / "manifest.json").read_text())
    python = _image_stand_in(tmp_path, {w["name"] for w in manifest["wheels"]})
    gpu_venv = tmp_path / "gpu-venv"
    # Step a fails here (no CUDA) and the GPU steps are skipped: what is checked is the install before them.
    rc, out = _run([python, tree / "scripts" / "gpu-check", "--steps", "a", "--venv", gpu_venv, "--out",
                    tmp_path / "check"], tree, env)
    report = json.loads((tmp_path / "check" / "gpu-check.json").read_text())
    install = next(r for r in report["steps"] if r["key"] == "install")
    assert install["status"] == "passed", (install["note"], out)
    assert set(install["metrics"]["bundled"]) == {w["name"] for w in manifest["wheels"] if not w["build_only"]}
    assert set(install["metrics"]["bundled"].values()) == {"ok"}
    assert rc == 1 and "CUDA IS NOT AVAILABLE" in (tmp_path / "check" / "gpu-check.md").read_text()

    # labelflip from the venv: the bundle's data, the shipped weights, a Foolbox and a pyautoattack attack, and the
    # pytest plugins (pytest-socket from the bundle: pyproject.toml's addopts need it).
    env.update(LABELFLIP_DATA_DIR=str(bundle / "data"))
    py = gpu_venv / "bin" / "python"
    for attack in (["--attack", "linf-pgd", "--epsilon", "0.05", "--engine", "reference"],
                   ["--attack", "linf-apgd-ce", "--epsilon", "0.05", "--engine", "reference", "--param", "n_iter=5"]):
        rc, out = _run([py, "-m", "labelflip_models.cli", "attack", "--dataset", "fashion-mnist", "--limit", "32",
                        "--device", "cpu", *attack, "--out", tmp_path / "runs" / attack[1]], tree, env)
        assert rc == 0, out
        assert json.loads((tmp_path / "runs" / attack[1] / "result.json").read_text())["dataset"]["n"] == 32
    rc, out = _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu_check.py",
                    "-k", "dry_run or bundle_check"], tree, env)
    assert rc == 0, out
