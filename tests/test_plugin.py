"""The plugin end to end on the cheapest real case (quick profile, FGSM): baseline life cycle and options."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATE_TESTS = (REPO / "robustness_tests" / "test_gate.py").read_text()


def gate(pytester_gate, baselines, *args):
    pytester_gate.makepyfile(test_gate=GATE_TESTS)
    return pytester_gate.runpytest_subprocess("-p", "no:cacheprovider", "--labelflip-profile", "quick",
                                         "--labelflip-baselines", str(baselines), "-k", "fgsm", *args)


@pytest.mark.slow
def test_missing_then_regenerated_then_passing(pytester_gate, tmp_path):
    baselines = tmp_path / "baselines"
    missing = gate(pytester_gate, baselines, "-p", "no:xdist")
    missing.assert_outcomes(passed=1, errors=11)  # the baseline fixture fails in setup
    missing.stdout.fnmatch_lines(["*no baseline for mnist-5k-fgsm-eps0.1*--labelflip-regen --labelflip-profile quick*"])

    regen = gate(pytester_gate, baselines, "-p", "no:xdist", "--labelflip-regen")
    regen.assert_outcomes(passed=1, skipped=11)
    written = sorted(p.name for p in (baselines / "quick" / "mnist-5k").iterdir())
    assert written == ["fgsm-eps0.1.csv", "fgsm-eps0.1.json"]

    # Same model, same seed: the gate passes, with and without xdist.
    for mode in (["-p", "no:xdist"], ["-n", "0"], ["-n", "2"]):
        gate(pytester_gate, baselines, *mode).assert_outcomes(passed=12)


@pytest.mark.parametrize("option, message", [
    (["--labelflip-profile", "nightly"], "*unknown profile 'nightly'*"),
    (["--labelflip-seed", "x"], "*--labelflip-seed must be an integer*"),
    (["--labelflip-device", "tpu:0"], "*device*"),
])
def test_bad_options_are_usage_errors(pytester_gate, option, message):
    pytester_gate.makepyfile(test_gate=GATE_TESTS)
    result = pytester_gate.runpytest_subprocess("-p", "no:xdist", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_options_and_ini_keys_are_declared(pytester_gate):
    pytester_gate.makeini("[pytest]\nlabelflip_profile = quick\n")
    result = pytester_gate.runpytest_subprocess("-p", "no:xdist", "--help")
    result.stdout.fnmatch_lines(["*--labelflip-profile*", "*--labelflip-regen*", "*--labelflip-require-data*",
                                 "*labelflip_baselines*"])
