"""A failing gate explains itself: the terminal summary's order, GitHub annotations, orphan baselines and
--labelflip-strict (the whole-gate behaviour on a weakened model is in test_gate_can_fail.py and
test_wheel_install.py)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from labelflip_models.errors import ConfigError
from labelflip_models.gate import config, failures
from labelflip_models.gate.baselines import noise_obtained_path, orphan_baselines, write_baseline, write_noise_baseline
from labelflip_models.gate.failures import github_annotations, summary_lines, verdict
from labelflip_models.gate.session import GATE_TAG, GateOutcomes

from .helpers import GATE_FILE, copied_baselines
from .test_faults import CASE, _baseline_result


def _flip_failure(case, name, flips, rise, p):
    properties = {"labelflip_check": "flip_rate", "labelflip_case": case, "labelflip_class": name,
                  "labelflip_flips": flips, "labelflip_n": 100, "labelflip_rate": flips / 100,
                  "labelflip_rise": rise, "labelflip_margin": 0.05, "labelflip_p_value": p,
                  "labelflip_paired": "yes", "labelflip_baseline_rate": flips / 100 - rise,
                  "labelflip_message": f"class {name!r}: {flips}/100 flipped"}
    return (f"robustness_tests/test_labelflip.py::test_class_flip_rate[{case}-{name}]", "E   AssertionError",
            properties)


def test_summary_lists_regressed_classes_worst_first_then_other_failures():
    failures = [_flip_failure("mnist-5k-fgsm-eps0.1", "3", 30, 0.15, 1e-4),
                _flip_failure("mnist-5k-fgsm-eps0.1", "9", 60, 0.45, 1e-9),
                ("t.py::test_attack_success[c]", "long text\nE   AssertionError: weaker\n", {}),
                _flip_failure("mnist-5k-linf-pgd-eps0.1", "5", 40, 0.25, 2e-6)]
    drift = [("t.py::test_white_noise[mnist-5k-white-noise]", "white-noise histogram (top: 8 900) vs baseline")]
    lines = summary_lines(failures, [Path("b/quick/mnist-5k/old.json")], ["b/x.obtained.json"], drift=drift)
    rows = [line for line in lines if "rise" in line and line.startswith("  ")]
    assert [r.split("'")[1] for r in rows] == ["9", "5", "3"]
    assert rows[0] == ("  mnist-5k-fgsm-eps0.1  '9': 60/100 = 0.600 vs baseline 0.150: rise +0.450 > margin 0.05 "
                       "(p=1e-09, paired)")
    assert "  t.py::test_attack_success[c]: AssertionError: weaker" in lines
    assert "  b/x.obtained.json" in lines and "  b/quick/mnist-5k/old.json" in lines
    assert lines.index("  t.py::test_white_noise[mnist-5k-white-noise]: white-noise histogram (top: 8 900) vs "
                       "baseline") > lines.index("  t.py::test_attack_success[c]: AssertionError: weaker")
    assert any(line.startswith("1 drift item(s)") and "not a loss of robustness" in line for line in lines)


def test_github_annotations_only_on_github_relative_to_the_workspace(monkeypatch, tmp_path):
    failures = [_flip_failure("mnist-5k-fgsm-eps0.1", "9", 60, 0.48, 0.22)]
    failures[0][2]["labelflip_message"] = "50% more, a: b,\nnext"
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    assert github_annotations(failures, tmp_path) == []
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    (line,) = github_annotations(failures, tmp_path / "repo")
    assert line == ("::error file=repo/robustness_tests/test_labelflip.py,title=labelflip%3A "
                    "test_class_flip_rate[mnist-5k-fgsm-eps0.1-9]::50%25 more, a: b,%0Anext")


def test_orphans_are_files_no_selected_case_uses(tmp_path):
    root = tmp_path / "b"
    files = ["quick/mnist-5k/fgsm-eps0.1.json", "quick/mnist-5k/fgsm-eps0.1.csv", "quick/mnist-5k/old-eps0.3.json",
             "quick/mnist-5k/fgsm-eps0.1.obtained.json", "quick/mnist-5k/.fgsm.json.tmp",
             "quick/fashion-mnist/fgsm-eps0.1.json", "quick/mnist/fgsm-eps0.1.json", "quick/svhn/fgsm-eps0.1.json",
             "quick/stray.json", "smoke/mnist-5k/old.json"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    used = {root / "quick/mnist-5k/fgsm-eps0.1.json", root / "quick/mnist-5k/fgsm-eps0.1.csv"}
    orphans = orphan_baselines(root, "quick", ("mnist-5k",), ("fashion-mnist", "mnist", "mnist-5k", "cifar-10"), used)
    # Not: used files, obtained files, temp files, other datasets' folders (mnist is not mnist-5k), other profiles.
    assert [p.relative_to(root).as_posix() for p in orphans] == [
        "quick/mnist-5k/old-eps0.3.json", "quick/stray.json", "quick/svhn/fgsm-eps0.1.json"]


def test_regen_into_installed_reference_baselines_is_a_config_error(monkeypatch, tmp_path):
    assert config.in_source_checkout(config.REFERENCE_BASELINES)  # this checkout's editable install
    installed = tmp_path / "site-packages" / "labelflip_models" / "gate" / "reference_baselines"
    installed.mkdir(parents=True)
    assert not config.in_source_checkout(installed)
    monkeypatch.setattr(config, "REFERENCE_BASELINES", installed)
    settings = {**config.DEFAULTS}
    with pytest.raises(ConfigError, match="would rewrite the reference baselines installed at .*site-packages.*; "
                                          "name the directory to write with --labelflip-baselines DIR"):
        config.parse_gate_config(settings.__getitem__, lambda key: key == "labelflip_regen", tmp_path)
    assert config.parse_gate_config(settings.__getitem__, lambda _: False, tmp_path).baselines == installed
    settings["labelflip_baselines"] = "mine"
    assert config.parse_gate_config(settings.__getitem__, lambda key: key == "labelflip_regen",
                                    tmp_path).baselines == tmp_path / "mine"


@pytest.mark.slow
@pytest.mark.parametrize("strict", [None, "--labelflip-strict", "ini"])
def test_orphan_baselines_are_reported_and_fail_under_strict(pytester_gate, tmp_path, strict):
    baselines = copied_baselines(tmp_path)
    (baselines / "quick" / "mnist-5k" / "fgsm-eps0.3.json").write_text("{}")
    pytester_gate.makepyfile(test_labelflip=GATE_FILE)
    if strict == "ini":
        pytester_gate.makeini("[pytest]\nlabelflip_strict = true\n")
    result = pytester_gate.runpytest_subprocess(
        # One token: pytest reads a bare path argument as a place to look for the ini file.
        "-p", "no:xdist", "-p", "no:cacheprovider", "--labelflip-profile", "quick",
        f"--labelflip-baselines={baselines}", "-k", "white_noise",
        *([strict] if strict == "--labelflip-strict" else []))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= labelflip gate =*", "1 baseline file(s) that no selected case uses*",
                                 f"  {baselines / 'quick' / 'mnist-5k' / 'fgsm-eps0.3.json'}"])
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if strict else pytest.ExitCode.OK)


def test_regenerating_a_baseline_removes_what_was_obtained_before(tmp_path):
    result = _baseline_result(0)
    obtained = write_baseline(CASE, tmp_path, result, obtained=True)
    assert obtained.name == "fgsm-eps0.1.obtained.json" and obtained.with_name("fgsm-eps0.1.obtained.csv").exists()
    assert json.loads(obtained.read_text())["result"] == result
    write_baseline(CASE, tmp_path, result)
    assert sorted(p.name for p in obtained.parent.iterdir()) == ["fgsm-eps0.1.csv", "fgsm-eps0.1.json"]
    noise = tmp_path / "quick" / "mnist-5k" / "white-noise.json"
    write_noise_baseline(noise_obtained_path(noise), {"n": 1}, "quick")
    assert noise_obtained_path(noise).exists()
    write_noise_baseline(noise, {"n": 1}, "quick")
    assert noise.exists() and not noise_obtained_path(noise).exists()


def test_failing_runs_against_installed_reference_baselines_go_to_the_rootdir(monkeypatch, tmp_path):
    cfg = config.parse_gate_config(config.DEFAULTS.__getitem__, lambda _: False, tmp_path)
    assert failures.obtained_root(cfg, tmp_path) == config.REFERENCE_BASELINES  # this checkout's: beside them
    monkeypatch.setattr(failures, "in_source_checkout", lambda path: False)
    assert failures.obtained_root(cfg, tmp_path) == tmp_path / "labelflip-obtained"
    own = config.parse_gate_config({**config.DEFAULTS, "labelflip_baselines": "mine"}.__getitem__, lambda _: False,
                                   tmp_path)
    assert failures.obtained_root(own, tmp_path) == tmp_path / "mine"


def _report(when, outcome, properties):
    return SimpleNamespace(when=when, passed=outcome == "passed", failed=outcome == "failed",
                           skipped=outcome == "skipped",
                           nodeid=f"t.py::{properties.get('labelflip_check', 'x')}", longreprtext="E   failed",
                           user_properties=[(GATE_TAG, True), *properties.items()])


def test_drift_is_collected_once_from_passing_tests_and_shown_in_the_verdict():
    outcomes = GateOutcomes()
    drift = {"labelflip_check": "white_noise", "labelflip_drift": "yes", "labelflip_message": "noise moved"}
    for when in ("setup", "call", "teardown"):  # the properties ride on every phase's report; the call counts
        outcomes.pytest_runtest_logreport(_report(when, "passed", drift))
    outcomes.pytest_runtest_logreport(_report("call", "passed", {**drift, "labelflip_drift": "no"}))
    outcomes.pytest_runtest_logreport(_report("call", "failed", {"labelflip_check": "flip_rate",
                                                                 "labelflip_message": "class '9' rose"}))
    assert outcomes.drift == [("t.py::white_noise", "noise moved")]
    assert verdict(outcomes) == {"passed": False, "failed": [{"test": "t.py::flip_rate", "message": "class '9' rose",
                                                           "kind": "less robust"}],
                                 "drift": [{"test": "t.py::white_noise", "message": "noise moved"}], "evaluation": []}


def test_evaluation_checks_are_collected_and_their_failures_told_apart():
    """A failing evaluation test is a verdict of its own: the figures cannot be trusted, not "less robust", also
    when it errors before recording anything; a weaker attack (test_attack_strength passes, with a warning) is listed
    as failed in the report's section, failed rows first."""
    from labelflip_models.gate.failures import verdict
    from labelflip_models.gate.session import GateOutcomes
    from labelflip_models.reports.markdown import verdict_markdown

    def report(nodeid, when, outcome, properties, text="E   failed"):
        return SimpleNamespace(when=when, passed=outcome == "passed", failed=outcome == "failed",
                               skipped=outcome == "skipped", nodeid=nodeid, longreprtext=text,
                               user_properties=[(GATE_TAG, True), *properties.items()])

    outcomes = GateOutcomes()
    outcomes.pytest_runtest_logreport(report("t.py::test_model_checks[m-model-checks]", "call", "passed",
                                             {"labelflip_message": "all 6 model checks passed"}))
    outcomes.pytest_runtest_logreport(report("t.py::test_covers_single_step[m-eps0.1]", "call", "failed",
                                             {"labelflip_check": "covers_single_step",
                                              "labelflip_message": "30 of 100 missed"}))
    outcomes.pytest_runtest_logreport(report("t.py::test_large_epsilon_breaks_everything[m-large-eps]", "call",
                                             "failed", {}, "E   labelflip: m.pt: not a model"))
    outcomes.pytest_runtest_logreport(report("t.py::test_attack_strength[m-fgsm-eps0.1]", "call", "passed",
                                             {"labelflip_passed": False, "labelflip_message": "weaker"}))
    # Not compared with AutoAttack: a skip, not an evaluation that failed.
    outcomes.pytest_runtest_logreport(report("t.py::test_attack_strength[m-fgsm-eps0.02]", "call", "skipped", {}))
    outcomes.pytest_runtest_logreport(report("t.py::test_class_flip_rate[m-fgsm-eps0.1-0]", "call", "failed",
                                             {"labelflip_check": "flip_rate", "labelflip_message": "class '0' rose"}))
    # Failed without a decision (a baseline --labelflip-regen refused to write), and a drift under
    # --labelflip-fail-on-drift: neither is a loss of robustness.
    outcomes.pytest_runtest_logreport(report("t.py::test_class_flip_rate[m-fgsm-eps0.2-0]", "call", "failed", {},
                                             "E   Failed: not writing m-fgsm-eps0.2's baseline"))
    outcomes.pytest_runtest_logreport(report("t.py::test_catch_all_classes[m-fgsm-eps0.1]", "call", "failed",
                                             {"labelflip_check": "catch_all", "labelflip_drift": "yes",
                                              "labelflip_message": "catch-all classes changed"}))
    result = verdict(outcomes)
    assert [(i["test"].split("::")[1][:20], i["kind"]) for i in result["failed"]] == [
        ("test_covers_single_s", "evaluation"), ("test_large_epsilon_b", "evaluation"),
        ("test_class_flip_rate", "less robust"), ("test_class_flip_rate", "not decided"),
        ("test_catch_all_class", "drift")]
    assert [(i["check"], i["passed"]) for i in result["evaluation"]] == [
        ("model_checks", True), ("covers_single_step", False), ("large_epsilon", False), ("attack_strength", False)]
    text = "\n".join(verdict_markdown(result))
    assert ("**Gate failed**: 1 test(s) found the model less robust than its baselines; 2 evaluation check(s) "
            "failed: the figures may not mean what they say; 1 drift test(s) failed under --labelflip-fail-on-drift; "
            "1 test(s) decided nothing (an error, a missing or refused baseline: see their messages).") in text
    table = text[text.index("#### Evaluation checks"):].splitlines()
    assert [row.split(" | ")[1] for row in table[4:8]] == ["FAILED", "FAILED", "FAILED", "passed"]
    assert "labelflip: m.pt: not a model" in text


@pytest.mark.parametrize("fail_on_drift", [False, True])
def test_drift_fails_only_when_asked(fail_on_drift):
    from labelflip_models.gate.decisions import Decision
    from labelflip_models.gate.tests.test_flip_structure import judge_drift

    recorded = {}
    config = SimpleNamespace(fail_on_drift=fail_on_drift)
    changed = Decision(False, "'3' became a catch-all", {"new_catch_all": "3"})
    judge_drift(lambda check, d, **figures: recorded.update(figures, check=check), config, "catch_all",
                Decision(True, "same"), "c: catch-all classes changed", case="c")
    assert recorded["drift"] == "no"
    if fail_on_drift:
        with pytest.raises(pytest.fail.Exception, match="drift; failing under --labelflip-fail-on-drift"):
            judge_drift(lambda check, d, **figures: recorded.update(figures), config, "catch_all", changed, "c")
    else:
        judge_drift(lambda check, d, **figures: recorded.update(figures), config, "catch_all", changed, "c")
    assert recorded["drift"] == "yes"
