"""The plugin end to end on the cheapest real case (quick profile, FGSM): baseline life cycle and options."""

import json
import subprocess
import sys

import pytest

from .helpers import GATE_ONLY

GATE_TESTS = GATE_ONLY


def gate(pytester_gate, baselines, *args):
    pytester_gate.makepyfile(test_gate=GATE_TESTS)
    return pytester_gate.runpytest_subprocess("-p", "no:cacheprovider", "--labelflip-profile", "quick",
                                         "--labelflip-baselines", str(baselines), "-k", "fgsm", *args)


@pytest.mark.slow
def test_missing_then_regenerated_then_passing(pytester_gate, tmp_path):
    baselines = tmp_path / "baselines"
    missing = gate(pytester_gate, baselines, "-p", "no:xdist")
    missing.assert_outcomes(passed=1, errors=12, skipped=1)  # the baseline fixture fails in setup
    missing.stdout.fnmatch_lines(["*no baseline for mnist-5k-fgsm-eps0.1*--labelflip-regen --labelflip-profile quick*"])

    regen = gate(pytester_gate, baselines, "-p", "no:xdist", "--labelflip-regen")
    regen.assert_outcomes(passed=1, skipped=13)
    written = sorted(p.name for p in (baselines / "quick" / "mnist-5k").iterdir())
    assert written == ["fgsm-eps0.1.csv", "fgsm-eps0.1.images.csv", "fgsm-eps0.1.json"]

    # Same model, same seed: the gate passes, with and without xdist.
    for mode in (["-p", "no:xdist"], ["-n", "0"], ["-n", "2"]):
        gate(pytester_gate, baselines, *mode).assert_outcomes(passed=13, skipped=1)


@pytest.mark.parametrize("option, message", [
    (["--labelflip-profile", "nightly"], "*unknown profile 'nightly'*"),
    (["--labelflip-seed", "x"], "*--labelflip-seed must be an integer*"),
    (["--labelflip-device", "tpu:0"], "*device*"),
    (["--labelflip-engine", "turbo"], "*--labelflip-engine: unknown engine 'turbo'*"),
    (["--labelflip-profile", "quik"], "*--labelflip-profile: unknown profile 'quik'*"),
    (["--labelflip-device", "gpu"], "*--labelflip-device: unknown device 'gpu'*"),
    (["--labelflip-report", "test_gate.py"], "*--labelflip-report: output path test_gate.py exists and is not a "
                                             "directory*"),
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


@pytest.mark.parametrize("option, message", [
    (["--labelflip-model", "model.ts"], "*needs --labelflip-dataset*"),
    (["--labelflip-model", "model.ts", "--labelflip-dataset", "mnist-5k"], "*needs --labelflip-baselines DIR*"),
    (["--labelflip-model", "nowhere.ts", "--labelflip-dataset", "mnist-5k"], "*no model file at nowhere.ts*"),
    (["--labelflip-arch", "cw-mnist"], "*describe a --labelflip-model; none given*"),
    (["--labelflip-dataset", "cifar-100"], "*unknown dataset 'cifar-100'*"),
    (["--labelflip-bounds", "1,0"], "*--labelflip-bounds: lower must be below upper*"),
    (["--labelflip-model", "model.ts", "--labelflip-dataset", "mnist-5k", "--labelflip-baselines", "b",
      "--labelflip-std", "0,x"], "*--labelflip-std*"),
    (["--labelflip-class-names", "a,b"], "*needs --labelflip-dataset*"),
    # A file the options cannot load is one usage error before collection, not a failure in every test.
    (["--labelflip-model", "weights.pt", "--labelflip-dataset", "mnist-5k", "--labelflip-baselines", "b"],
     "*--labelflip-model weights.pt: weights.pt holds only weights (a state dict); pass --labelflip-arch to say*"),
    (["--labelflip-model", "model.ts", "--labelflip-dataset", "mnist-5k", "--labelflip-baselines", "b"],
     "*--labelflip-model model.ts: model.ts is an empty file; accepted formats*"),
    (["--labelflip-model", "weights.pt", "--labelflip-dataset", "cifar-10", "--labelflip-baselines", "b",
      "--labelflip-arch", "cw-mnist"], "*do not fit --labelflip-arch cw-mnist*"),
])
def test_bad_own_model_options_are_usage_errors(pytester_gate, option, message):
    import torch

    from labelflip_models.models.architectures import build_model

    pytester_gate.makepyfile(test_gate=GATE_TESTS)
    (pytester_gate.path / "model.ts").write_bytes(b"")
    torch.save(build_model("cw-mnist").net.state_dict(), pytester_gate.path / "weights.pt")
    result = pytester_gate.runpytest_subprocess("-p", "no:xdist", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.fixture(scope="module")
def mnist5k_reference():
    from labelflip_models.data import load_dataset
    from labelflip_models.models.cache import load_or_train

    return load_or_train(load_dataset("mnist-5k")).model


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_own_model_gets_its_own_baselines_and_passes(pytester_gate, tmp_path, mnist5k_reference):
    """The reference network exported as TorchScript goes through --labelflip-model end to end."""
    import torch

    model = tmp_path / "mine.ts"
    torch.jit.script(mnist5k_reference).save(str(model))
    own = ["--labelflip-model", str(model), "--labelflip-dataset", "mnist-5k"]
    baselines = tmp_path / "mine"
    gate(pytester_gate, baselines, "-p", "no:xdist", "--labelflip-regen", *own).assert_outcomes(passed=1, skipped=13)
    recorded = json.loads((baselines / "quick" / "mnist-5k" / "fgsm-eps0.1.json").read_text())
    assert recorded["result"]["model"]["path"] == str(model)
    gate(pytester_gate, baselines, "-n", "2", *own).assert_outcomes(passed=13, skipped=1)


@pytest.mark.slow
def test_pickled_own_model_is_refused_in_the_gate(pytester_gate, tmp_path, mnist5k_reference):
    import torch

    model = tmp_path / "whole.pt"
    torch.save(mnist5k_reference, model)
    result = gate(pytester_gate, tmp_path / "b", "-p", "no:xdist", "--labelflip-model", str(model),
                  "--labelflip-dataset", "mnist-5k")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # refused once, before any test runs
    result.stderr.fnmatch_lines(["*executes arbitrary code*--labelflip-trust-pickle*"])


def test_ini_paths_are_relative_to_the_ini_file(pytester_gate):
    """Started from a subfolder, the gate still finds the data dir and the class-names file its ini file names."""
    pytester_gate.makeini("[pytest]\nlabelflip_profile = quick\nlabelflip_dataset = mnist-5k\n"
                          "labelflip_data_dir = data\nlabelflip_class_names = @names.txt\n")
    (pytester_gate.path / "data").mkdir()
    (pytester_gate.path / "names.txt").write_text("".join(f"digit{i}\n" for i in range(10)))
    pytester_gate.makepyfile(test_gate=GATE_TESTS)
    sub = pytester_gate.mkdir("sub")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "--co",
                             "-q", str(pytester_gate.path)], cwd=sub, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_class_flip_rate[mnist-5k-fgsm-eps0.1-digit9]" in result.stdout


def test_evaluation_tests_are_collected_before_the_other_gate_tests(pytester_gate):
    """The gate's evaluation tests come first among its tests, cheapest first; a test of the user's own, collected
    before the gate, keeps its place."""
    from labelflip_models.gate.session import evaluation_check

    from .helpers import GATE_FILE

    pytester_gate.makepyfile(test_a_mine="def test_mine():\n    pass\n", test_gate=GATE_FILE)
    result = pytester_gate.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", "--collect-only", "-q",
                                                "--labelflip-profile", "smoke")
    ids = [line for line in result.stdout.lines if "::" in line]
    assert ids[0] == "test_a_mine.py::test_mine"
    kinds = [evaluation_check(i) is not None for i in ids[1:]]
    first_other = kinds.index(False)
    assert first_other > 20 and not any(kinds[first_other:]), ids
    names = list(dict.fromkeys(i.split("::")[1].partition("[")[0] for i in ids[1:first_other + 2]))
    assert names == ["test_model_checks", "test_large_epsilon_breaks_everything", "test_monotone_in_epsilon",
                     "test_covers_single_step", "test_converged", "test_white_box_beats_black_box",
                     "test_attack_strength", "test_catch_all_classes"], names
