"""scripts/gpu-check and scripts/gpu-bundle, the GPU machine's verification run and what it carries, checked here
without a GPU: bad input, the dry run's report, the time budget, that a failing or hanging step neither stops the next
one nor leaves an invalid report, that GPU steps are skipped loudly without CUDA, the output parsers, and the
bundle's dependency walk and wheel slimming."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

# Imported at collection, not in the test: the first import of urllib3 (through foolbox) probes an IPv6 socket, which
# pytest-socket reports as a warning once sockets are disabled.
from labelflip_models.bench.throughput import Rate, Throughput

REPO = Path(__file__).resolve().parent.parent


def _load(script: str) -> ModuleType:
    name = script.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(name, str(REPO / "scripts" / script))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


gc = _load("gpu-check")
gb = _load("gpu-bundle")
KEYS = list("aghfecbd")  # the order they run in: the targets first


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A bundle that passes gpu-bundle's check (its files are stand-ins: nothing here installs them)."""
    layout = gb.Layout(tmp_path / "bundle")
    layout.wheels.mkdir(parents=True)
    (layout.wheels / "foolbox-3.3.4-py3-none-any.whl").write_bytes(b"a wheel")
    (layout.wheels / "setuptools-84.2.1-py3-none-any.whl").write_bytes(b"a build requirement")
    layout.fashion_mnist.mkdir(parents=True)
    for name in gc.FASHION_MNIST_FILES:
        (layout.fashion_mnist / name).write_bytes(name.encode())
    gb.write_outputs(layout, gb.Walk(pins={"foolbox": "3.3.4", "setuptools": "84.2.1"},
                                     needed_by={"foolbox": ["labelflip"], "setuptools": ["labelflip's build"]},
                                     build={"setuptools"}, from_image={"torch": [">=2.11 (labelflip)"]}))
    return layout.root


def _report(out: Path) -> dict:
    return json.loads((out / "gpu-check.json").read_text())


def _status(report: dict) -> dict[str, str]:
    return {r["key"]: r["status"] for r in report["steps"]}


# --- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "z"], "unknown step 'z'"),
    (["--steps", "a,,b"], "unknown step ''"),
    (["--steps", ""], "unknown step ''"),
    (["--budget-s", "-5"], "--budget-s must be a positive number"),
    (["--budget-s", "0"], "--budget-s must be a positive number"),
    (["--budget-s", "nan"], "--budget-s must be a positive number"),
    (["--budget-s", "abc"], "invalid float value"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert gc.main([*args, "--no-install", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu-check: error: ") and message in err
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "report"
    out.write_text("not a folder")
    assert gc.main(["--no-install", "--dry-run", "--out", str(out)]) == 2
    assert f"--out {out} is a file, not a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_missing_bundle_is_refused_when_installing(tmp_path, capsys):
    out = tmp_path / "out"
    assert gc.main(["--bundle", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no usable bundle" in err and "no manifest.json" in err
    assert "scripts/gpu-bundle" in err
    assert not out.exists()


def test_a_damaged_bundle_is_refused_with_what_is_wrong(bundle, tmp_path, capsys):
    (bundle / "wheels" / "foolbox-3.3.4-py3-none-any.whl").write_bytes(b"another wheel")
    assert gc.main(["--bundle", str(bundle), "--out", str(tmp_path / "out")]) == 2
    assert "wheel foolbox-3.3.4-py3-none-any.whl differs" in capsys.readouterr().err


def test_dry_run_without_a_bundle_shows_the_plan_and_what_is_missing(tmp_path, capsys):
    out = tmp_path / "out"
    assert gc.main(["--dry-run", "--bundle", str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NOT usable" in printed and "lacks: no manifest.json" in printed and "install (timeout" in printed
    report = _report(out)
    assert report["bundle"]["usable"] is False and set(_status(report).values()) == {gc.NOT_RUN_DRY}
    assert "lacks: no manifest.json" in (out / "gpu-check.md").read_text()


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu-check"), "--steps", "b,zz", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("gpu-check: error: --steps: unknown step 'zz'") and done.stderr.count("\n") == 1


# --- dry run ----------------------------------------------------------------------------------------------------

def test_dry_run_lists_every_step_in_valid_json_and_markdown(bundle, tmp_path, capsys):
    out = tmp_path / "out"
    assert gc.main(["--dry-run", "--bundle", str(bundle), "--out", str(out)]) == 0
    report = _report(out)
    assert report["schema"] == gc.SCHEMA and report["dry_run"] and report["complete"]
    assert [r["key"] for r in report["steps"]] == ["install", *KEYS]
    assert set(_status(report).values()) == {gc.NOT_RUN_DRY}
    assert all(r["commands"] for r in report["steps"])
    commands = {r["key"]: " ".join(c["command"] for c in r["commands"]) for r in report["steps"]}
    assert str(bundle / "wheels") in commands["install"] and "--no-deps" in commands["install"]
    assert report["bundle"]["usable"] and report["bundle"]["problems"] == []
    assert [w["name"] for w in report["bundle"]["manifest"]["wheels"]] == ["foolbox", "setuptools"]
    assert "-m cuda" in commands["c"] and "steps=40" in commands["g"] and "--retrain" in commands["f"]
    text = (out / "gpu-check.md").read_text()
    assert text.count(gc.NOT_RUN_DRY) == 9
    assert all(f"| {gc.label(r)} |" in text for r in report["steps"])
    printed = capsys.readouterr().out
    assert all(f"{gc.label(r)} (timeout" in printed for r in report["steps"])
    assert ": usable" in printed and "foolbox 3.3.4  (needed by labelflip)" in printed
    assert "torch >=2.11 (labelflip)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.md"]  # no temp file left


def test_dry_run_marks_unselected_steps_and_always_keeps_a(tmp_path):
    out = tmp_path / "out"
    assert gc.main(["--dry-run", "--no-install", "--steps", "pgd,B", "--out", str(out)]) == 0
    assert _status(_report(out)) == {k: gc.NOT_RUN_DRY if k in "abg" else gc.NOT_SELECTED for k in KEYS}


def test_out_defaults_to_the_device_tools_out_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "device-out"))
    assert gc.main(["--dry-run", "--no-install"]) == 0
    assert _report(tmp_path / "device-out")["dry_run"]


# --- running: budget, failures, timeouts, no CUDA -----------------------------------------------------------------

def _step(key: str, code: str, timeout_s: float = 30, min_s: float = 0.1, *args: str) -> gc.Step:
    return gc.Step(key, key, f"step {key}", timeout_s, min_s, False,
                   lambda ctx: [gc.Command([sys.executable, "-c", code, *args])],
                   lambda ctx, runs: gc.exit_verdict(runs, "ran"))


def _run(steps: list, tmp_path: Path, budget_s: float = 60) -> dict:
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    out.mkdir()
    ctx = gc.Context(sys.executable, tmp_path / "venv", work, out, tmp_path / "no-bundle", dict(os.environ))
    report = gc.new_report(steps, {s.key for s in steps}, budget_s, False, [])
    gc.run_all(steps, ctx, report, budget_s, time.monotonic())
    assert _report(out) == json.loads(json.dumps(report))  # what is on disk is the final state
    return report


def test_fit_cuts_the_timeout_to_the_budget_left():
    step = _step("x", "", timeout_s=60, min_s=15)
    assert gc.fit(step, 100) == 60
    assert gc.fit(step, 30) == 30
    assert gc.fit(step, 14.9) is None


def test_a_step_that_would_not_fit_is_skipped_and_the_next_still_runs(tmp_path):
    report = _run([_step("big", "", min_s=50), _step("small", "print('ok')")], tmp_path, budget_s=20)
    big, small = report["steps"]
    assert big["status"] == "skipped" and big["note"].startswith("would not fit: needs at least 50 s")
    assert small["status"] == "passed" and small["timeout_s"] <= 20


def test_failing_and_hanging_steps_do_not_stop_the_next_and_the_report_is_valid_after_each(tmp_path):
    # The hanging step also starts a grandchild: the timeout must end it too (an xdist worker, say).
    hang = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(60)']); print(child.pid, flush=True); time.sleep(60)")
    # The third step reads the report as written after the second: it must be valid JSON and up to date.
    read = "import json, sys; print(json.load(open(sys.argv[1]))['steps'][1]['status'])"
    start = time.monotonic()
    report = _run([_step("fail", "print('boom'); raise SystemExit(3)"), _step("hang", hang, 2),
                   _step("read", read, 30, 0.1, str(tmp_path / "out" / "gpu-check.json"))], tmp_path)
    fail, hang_record, read_record = report["steps"]
    assert fail["status"] == "failed" and "exit status 3" in fail["note"]
    assert "boom" in fail["commands"][0]["output_tail"]
    assert hang_record["status"] == "timed out" and hang_record["commands"][0]["timed_out"]
    assert time.monotonic() - start < 20
    grandchild = Path(f"/proc/{int(hang_record['commands'][0]['output_tail'].split()[0])}/stat")
    assert not grandchild.exists() or grandchild.read_text().split(")")[1].split()[0] == "Z"  # gone, or a zombie
    assert read_record["status"] == "passed" and read_record["commands"][0]["output_tail"].strip() == "timed out"
    assert "### hang: timed out" in (tmp_path / "out" / "gpu-check.md").read_text()


def test_without_cuda_the_report_says_so_and_gpu_steps_are_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, also on a machine that has one
    out = tmp_path / "out"
    assert gc.main(["--no-install", "--steps", "pgd,determinism", "--out", str(out)]) == 1
    report = _report(out)
    steps = {r["key"]: r for r in report["steps"]}
    assert steps["a"]["status"] == "failed" and steps["a"]["note"].startswith("CUDA NOT AVAILABLE")
    assert steps["a"]["metrics"]["torch"] and steps["a"]["metrics"]["device_class"].startswith("cpu-")
    for key in "gh":
        assert steps[key]["status"] == "skipped" and steps[key]["note"].startswith("needs CUDA: torch ")
    assert report["cuda"]["available"] is False and report["complete"]
    assert "> **CUDA IS NOT AVAILABLE" in (out / "gpu-check.md").read_text()


def test_a_step_too_big_for_the_whole_budget_is_skipped_without_running(tmp_path):
    out = tmp_path / "out"
    assert gc.main(["--no-install", "--steps", "a", "--budget-s", "1", "--out", str(out)]) == 1
    a = _report(out)["steps"][0]
    assert a["status"] == "skipped" and "would not fit" in a["note"] and a["commands"] == []


# --- parsers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("x\n520 passed, 3 skipped in 45.21s\n", {"passed": 520, "skipped": 3, "seconds": 45.21}),
    ("==== 3 failed, 517 passed, 1 warning in 99.50s (0:01:39) ====", {"failed": 3, "passed": 517, "warning": 1,
                                                                      "seconds": 99.5}),
    ("1248 deselected in 4.73s", {"deselected": 1248, "seconds": 4.73}),
    ("no tests ran in 0.01s", {"seconds": 0.01}),
    ("2 errors in 1s", {"error": 2, "seconds": 1.0}),
    ("it ran in a minute", {}),
])
def test_pytest_summary(text, expected):
    assert gc.pytest_summary(text) == expected


def test_throughput_table_reads_what_labelflip_throughput_prints():
    table = Throughput("preact-resnet18", "cuda", "cuda-NVIDIA H200", 512, 11_173_962, 0.5564,
                       (Rate("train", "bf16", 25_000.0, 1.67, 0.123), Rate("linf-pgd", "fp32", 900.5, 1.1, None))
                       ).table()
    parsed = gc.throughput_table("some log line\n" + table)
    assert parsed["heading"].startswith("preact-resnet18 on cuda (cuda-NVIDIA H200), batch 512")
    train, pgd = parsed["rates"]
    assert (train["step"], train["precision"], train["image_steps_per_s"]) == ("train", "bf16", 25_000.0)
    assert train["peak_fraction"] == pytest.approx(0.123) and pgd["peak_fraction"] is None
    assert pgd["gflop_per_s"] == pytest.approx(990.6, abs=0.1)


def test_train_result_reads_a_training_and_ignores_a_loaded_model():
    assert gc.train_result("fashion-mnist: test accuracy 0.9312 (trained in 8.4 s, seed 0)\nmodel: x") == (0.9312,
                                                                                                            8.4)
    assert gc.train_result("fashion-mnist: test accuracy 0.9237 (loaded from cache, seed 0)") is None


def test_judge_train_reports_targets_met_and_missed():
    ran = gc.Ran(["python"], 0, 9.0, "fashion-mnist: test accuracy 0.9150 (trained in 7.5 s, seed 0)\n")
    verdict = gc.judge_train(None, [ran])
    assert verdict.status == "passed"
    assert [(t["value"], t["met"]) for t in verdict.targets] == [(0.915, False), (7.5, True)]


def test_pytest_collecting_nothing_is_a_failure_with_the_reason():
    ran = gc.Ran(["python", "-m", "pytest"], 5, 5.0, "1248 deselected in 4.73s\n")
    verdict = gc.judge_pytest([ran], "no test carries the cuda marker")
    assert verdict.status == "failed" and verdict.note.endswith("no test carries the cuda marker")
    assert verdict.metrics["deselected"] == 1248


@pytest.mark.parametrize(("images", "seconds", "status", "met"), [
    (10_000, 0.42, "passed", True), (10_000, 0.8, "passed", False), (200, 0.1, "failed", None)])
def test_judge_pgd_reads_result_json(images, seconds, status, met, tmp_path):
    (tmp_path / "work" / "pgd-1").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "work" / "pgd-1" / "result.json").write_text(json.dumps({
        "dataset": {"n": images}, "attack": {"steps": 40, "engine": "native (bf16)", "batch_size": 4096},
        "provenance": {"attack_seconds": seconds, "wall_seconds": seconds + 2, "device": "cuda (NVIDIA H200)"},
        "flip_fraction": {"rate": 0.87}, "clean_accuracy": {"rate": 0.93}}))
    ctx = gc.Context(sys.executable, tmp_path / "venv", tmp_path / "work", tmp_path / "out", tmp_path, {})
    verdict = gc.judge_pgd(ctx, [gc.Ran(["python"], 0, 3.0, "")])
    assert verdict.status == status
    assert [t["met"] for t in verdict.targets] == ([] if met is None else [met])
    assert (tmp_path / "out" / "gpu-pgd-result.json").is_file()


def _result(tmp_path: Path, name: str, matrix: list[list[int]], seconds: float) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "result.json").write_text(json.dumps({
        "flip_matrix": matrix, "attack": {"steps": 40},
        "provenance": {"timestamp": f"t{seconds}", "wall_seconds": seconds + 1, "attack_seconds": seconds}}))
    return run


def test_compare_runs_ignores_timings_and_reports_differing_cells(tmp_path):
    first = _result(tmp_path, "one", [[5, 1], [0, 7]], 0.4)
    assert gc.compare_runs(first, _result(tmp_path, "two", [[5, 1], [0, 7]], 0.5)).status == "passed"
    verdict = gc.compare_runs(first, _result(tmp_path, "three", [[5, 2], [0, 7]], 0.4))
    assert verdict.status == "failed" and "differ in 1 of 4 cells" in verdict.note
    assert verdict.metrics["result_fields_differing"] == ["flip_matrix[0][1]"]


# --- gpu-bundle -------------------------------------------------------------------------------------------------

def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), extras: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel with the given requirements, enough for pip's resolver."""
    dist = f"{name}-{version}.dist-info"
    metadata = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                        *(f"Provides-Extra: {e}\n" for e in extras), *(f"Requires-Dist: {r}\n" for r in requires)])
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{name}/__init__.py", "")
        whl.writestr(f"{dist}/METADATA", metadata)
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A package index of a few wheels, and pip told to use it alone (no configured index, no constraints)."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    _wheel(folder, "alpha", "1.0", ("beta>=2", "torch>=2.0", "numpy", "ruff", "gamma[plots]", "zeta", "eta",
                                    'old-backport; python_version < "3.12"', 'winonly; sys_platform == "win32"'))
    _wheel(folder, "beta", "1.0")
    _wheel(folder, "beta", "2.0", ("nvidia-cublas",))
    _wheel(folder, "gamma", "1.0", ('epsilon; extra == "plots"',), extras=("plots",))
    _wheel(folder, "epsilon", "1.0")
    _wheel(folder, "eta", "1.0", ("zeta<2",))
    _wheel(folder, "zeta", "1.0")
    _wheel(folder, "zeta", "2.0")
    _wheel(folder, "old-backport", "1.0")
    return folder


def test_bundle_walk_resolves_what_the_gpu_machine_lacks_with_real_pip(index):
    found = gb.walk([gb.Requirement("alpha")], "labelflip", find_links=[index])
    # beta >= 2 though 1.0 exists; gamma's extra brings epsilon; eta's zeta<2 restarts the walk, which then takes
    # zeta 1.0; markers are the GPU machine's (Python 3.12, Linux).
    assert found.pins == {"alpha": "1.0", "beta": "2.0", "epsilon": "1.0", "eta": "1.0", "gamma": "1.0",
                          "zeta": "1.0"}
    assert found.needed_by["zeta"] == ["alpha", "eta"] and found.needed_by["epsilon"] == ["gamma"]
    # What the image has ends the walk: no index here holds torch, numpy or the CUDA libraries.
    assert found.from_image == {"torch": [">=2.0 (alpha)"], "numpy": ["any (alpha)"], "nvidia-cublas": ["any (beta)"]}
    assert found.left_out == {"ruff"}


def test_bundle_walk_adds_only_the_extras_a_later_requirement_asks_for(index):
    _wheel(index, "kappa", "1.0", ("nu", "numpy", 'mu; extra == "x"'), extras=("x",))
    _wheel(index, "lam", "1.0", ("kappa[x]",))
    for name in ("mu", "nu"):
        _wheel(index, name, "1.0")
    found = gb.walk([gb.Requirement("kappa"), gb.Requirement("lam"),
                     gb.Requirement('old-backport; python_version < "3.12"')], "labelflip", find_links=[index])
    assert found.pins == {"kappa": "1.0", "lam": "1.0", "mu": "1.0", "nu": "1.0"}  # markers hold at the roots too
    assert found.from_image == {"numpy": ["any (kappa)"]}  # kappa's own requirements walked once


def test_bundle_walk_names_the_wheel_it_cannot_find(index):
    _wheel(index, "delta", "1.0", ("nosuch>=3",))
    with pytest.raises(gb.BundleError, match=r"(?s)no Python 3.12 manylinux x86-64 wheel of nosuch>=3 .*nosuch"):
        gb.walk([gb.Requirement("alpha"), gb.Requirement("delta")], "labelflip", find_links=[index])


def test_bundle_of_the_project_carries_its_build_requirements_but_never_torch():
    def resolve(wanted: dict[str, str], find_links: list[Path]) -> dict[str, tuple[str, list[str]]]:
        return {name: ("1.0", ["torch", "requests"] if name == "pyautoattack" else []) for name in wanted}

    found = gb.walk_project(resolve=resolve)
    assert {"foolbox", "pyautoattack", "torchattacks", "mlxtend", "pytest-socket", "platformdirs"} <= set(found.pins)
    assert not {"torch", "torchvision", "numpy", "scipy", "pytest", "ruff"} & set(found.pins)
    # setuptools: the image has it, but the editable install's isolated build sees only the bundle.
    assert "setuptools" in found.pins and found.build == {"setuptools"}
    assert "any (pyautoattack)" in found.from_image["torch"]


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda b: (b / "wheels" / "foolbox-3.3.4-py3-none-any.whl").unlink(), "wheel foolbox-3.3.4-py3-none-any.whl "
                                                                          "is missing"),
    (lambda b: (b / "requirements.txt").write_text("foolbox==3.3.4\nplatformdirs==4\n"),
     "pins platformdirs==4, for which the bundle holds no wheel"),
    (lambda b: (b / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x"),
     "data file fashion-mnist/t10k-labels-idx1-ubyte.gz differs"),
    (lambda b: (b / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink(),
     "data file fashion-mnist/t10k-labels-idx1-ubyte.gz is missing"),
    (lambda b: _edit(b / "manifest.json", '"inputs": "', '"inputs": "0'),
     "labelflip's requirements or scripts/gpu-bundle changed since the bundle was made"),
    (lambda b: (b / "manifest.json").write_text("{"), "manifest.json cannot be read"),
    # A bundle of the previous script: no schema, wheels without names.
    (lambda b: (b / "manifest.json").write_text('{"wheels": [{"file": "x.whl"}]}'),
     "manifest.json is of another format (None), not labelflip.gpu-bundle/2: run scripts/gpu-bundle --refresh"),
    (lambda b: _edit(b / "manifest.json", '"data": {', '"data": 3, "x": {'), "manifest.json is malformed"),
    (lambda b: (b / "requirements.txt").write_text(""), "does not pin foolbox==3.3.4, which the bundle holds"),
])
def test_bundle_check_finds_what_makes_a_bundle_unusable(bundle, damage, problem, capsys):
    assert gb.main(["--check", "--bundle", str(bundle)]) == 0
    damage(bundle)
    assert gb.main(["--check", "--bundle", str(bundle), "--json", str(bundle.parent / "found.json")]) == 1
    printed = capsys.readouterr().out
    assert "NOT usable" in printed and problem in printed and "Traceback" not in printed
    found = json.loads((bundle.parent / "found.json").read_text())
    assert not found["usable"] and any(problem in p for p in found["problems"])


def test_bundle_bad_options_get_one_error_line(tmp_path, capsys):
    assert gb.main(["--find-links", str(tmp_path / "nowhere"), "--bundle", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err == f"gpu-bundle: error: --find-links {tmp_path / 'nowhere'}: no such folder\n"
    assert not (tmp_path / "b").exists()


def test_slim_wheel_drops_the_members_and_their_record_lines(tmp_path):
    source = tmp_path / "src.whl"
    with zipfile.ZipFile(source, "w") as whl:
        whl.writestr("pkg/__init__.py", "x = 1\n")
        whl.writestr("pkg/examples/model.pt", b"\0" * 1000)
        whl.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,sha256=a,6\npkg/examples/model.pt,sha256=b,1000\n"
                                                 "pkg-1.0.dist-info/RECORD,,\n")
    dest = tmp_path / "pkg-1.0-py3-none-any.whl"
    gb.slim_wheel(source, dest, gb.re.compile(r"^pkg/examples/.*\.pt$"))
    with zipfile.ZipFile(dest) as whl:
        assert whl.namelist() == ["pkg/__init__.py", "pkg-1.0.dist-info/RECORD"]
        assert whl.read("pkg-1.0.dist-info/RECORD").decode() == ("pkg/__init__.py,sha256=a,6\n"
                                                                 "pkg-1.0.dist-info/RECORD,,\n")
