"""Silent until asked: an unrelated suite runs the same with labelflip installed as without it (`-p no:labelflip`
keeps the installed plugin from loading at all), with and without xdist, and nothing of labelflip's reaches it."""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from .helpers import GATE_FILE

UNRELATED_TESTS = """
import warnings

import pytest


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert "labelflip" == "other"


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


@pytest.mark.xfail(reason="known")
def test_xfails():
    raise ValueError


@pytest.mark.parametrize("n", range(6))
def test_many(n):
    assert n >= 0


def test_warns():
    # The warning filters foolbox's import needs must not be installed in this session.
    warnings.warn("Please import `gaussian_filter` from elsewhere", DeprecationWarning)
"""

# Writes what each process of the session saw, when it ends: modules, warning filters, torch's threads.
FACTS_CONFTEST = """
import json, os, sys, warnings


def pytest_sessionfinish(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    facts = {"torch": "torch" in sys.modules, "foolbox": "foolbox" in sys.modules,
             "labelflip": sorted(m for m in sys.modules if m.startswith("labelflip_models.")),
             "filters": [str(f) for f in warnings.filters],
             "markers_lines": len(session.config.getini("markers"))}
    with open(os.path.join(os.environ["FACTS_DIR"], f"{worker}.json"), "w") as f:
        json.dump(facts, f)
"""


def _run(root, name, *args):
    """Run the unrelated suite in a folder of its own; (outcome counts, per-test outcomes, facts per process,
    xdist's scheduling line, the folder's files afterwards)."""
    # A folder named like the plugin: nothing may take the suite's tests for gate tests by their path.
    suite, facts_dir = root / name / "labelflip", root / name / "facts"
    suite.mkdir(parents=True)
    facts_dir.mkdir()
    (suite / "test_unrelated.py").write_text(UNRELATED_TESTS)
    (suite / "conftest.py").write_text(FACTS_CONFTEST)
    junit = root / name / "junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"FACTS_DIR": str(facts_dir),
                                                                                   "GITHUB_ACTIONS": "true"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", f"--junitxml={junit}",
                           *args], cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (\w+)", lines[-1]))
    outcomes = {case.get("name"): [child.tag for child in case] for case in ET.parse(junit).getroot().iter("testcase")}
    facts = {p.stem: json.loads(p.read_text()) for p in facts_dir.iterdir()}
    scheduling = [line for line in lines if "scheduling tests via" in line]
    assert "labelflip gate" not in proc.stdout and "::error" not in proc.stdout, proc.stdout
    return counts, outcomes, facts, scheduling, sorted(p.relative_to(suite) for p in suite.rglob("*"))


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["in-process", "xdist"])
def test_unrelated_suite_is_unchanged_by_the_plugin(tmp_path, xdist):
    args = xdist or ["-p", "no:xdist"]
    counts, outcomes, facts, scheduling, files = _run(tmp_path, "with", *args)
    without = _run(tmp_path, "without", "-p", "no:labelflip", *args)

    assert counts == without[0] and {k: counts[k] for k in ("passed", "failed", "skipped", "xfailed", "warning")} \
        == {"passed": 8, "failed": 1, "skipped": 1, "xfailed": 1, "warning": 1}, counts
    assert outcomes == without[1] and len(outcomes) == 11
    assert scheduling == without[3]
    if xdist:
        assert scheduling == ["scheduling tests via LoadScheduling"]
        assert set(facts) == {"main", "gw0", "gw1"}
    # Every process: no torch, foolbox or gate module imported; the same warning filters as without labelflip.
    for process, seen in facts.items():
        assert not seen["torch"] and not seen["foolbox"], process
        assert set(seen["labelflip"]) <= {"labelflip_models.errors", "labelflip_models.gate",
                                          "labelflip_models.gate.config", "labelflip_models.gate.fixtures",
                                          "labelflip_models.gate.failures", "labelflip_models.gate.margins",
                                          "labelflip_models.gate.plugin",
                                          "labelflip_models.gate.profiles", "labelflip_models.gate.session",
                                          "labelflip_models.models", "labelflip_models.models.reference"}, process
        assert seen["filters"] == without[2][process]["filters"], process
    # No files: the suite's folder holds the same after either run.
    assert files == without[4]


CASE_IDS_TEST = """
import pytest


@pytest.mark.labelflip_cases("all")
def test_case_id(labelflip_case):
    assert labelflip_case.id
"""


@pytest.mark.parametrize("asked, scheduler", [([], "LoadScheduling"),
                                              (["--labelflip-profile", "quick"], "CaseScheduling"),
                                              (["-o", "labelflip_profile=quick"], "CaseScheduling")],
                         ids=["not-asked", "option", "ini-key"])
def test_case_scheduling_only_when_a_setting_asks_for_labelflip(pytester, asked, scheduler):
    """Gate tests run under xdist either way; the case-aware scheduler comes with a labelflip setting."""
    pytester.makepyfile(test_cases=CASE_IDS_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "-v", *asked)
    result.assert_outcomes(passed=3 if asked else 32)  # quick: 3 cases; smoke: 16 per dataset, two datasets
    result.stdout.fnmatch_lines([f"scheduling tests via {scheduler}"])


def test_a_configured_repository_runs_its_other_tests_without_the_gate(tmp_path):
    """Settings in the ini file are read when the first gate test is collected: the repository's unit tests neither
    import torch nor load the model, even a missing one; the gate's tests then fail to collect with one message."""
    suite = tmp_path / "repo"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\nlabelflip_model = missing.ts\nlabelflip_dataset = mnist-5k\n"
                                      "labelflip_baselines = b\n")
    (suite / "test_unit.py").write_text("import sys\n\ndef test_unit():\n    assert 'torch' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    for args in (["-p", "no:xdist"], ["-n", "2"]):
        unit = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_unit.py", *args],
                              cwd=suite, env=env, capture_output=True, text=True, timeout=300)
        assert unit.returncode == 0 and "1 passed" in unit.stdout, unit.stdout + unit.stderr
    (suite / "test_labelflip.py").write_text(GATE_FILE)
    gate = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist"], cwd=suite,
                          env=env, capture_output=True, text=True, timeout=300)
    assert gate.returncode == pytest.ExitCode.INTERRUPTED, gate.stdout + gate.stderr
    assert f"labelflip: --labelflip-model: no model file at {suite / 'missing.ts'}" in gate.stdout
    assert "Traceback" not in gate.stdout + gate.stderr and "1 error" in gate.stdout
