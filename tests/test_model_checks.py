"""The model checks (runs/model_checks.py) on the Fashion-MNIST reference model as it is and broken in each of the
ways that make attacks meaningless: each break is flagged by its own check, and the model as it is by none; the
checks in `labelflip attack`, result.json and the gate's refusal to write baselines."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelflip_models.data import balanced_subset, load_dataset
from labelflip_models.errors import ConfigError
from labelflip_models.models.cache import load_or_train
from labelflip_models.models.io import LogOfProbabilities, check_model, logits_adapter
from labelflip_models.runs.model_checks import check_logits, model_checks, warning_summary

# name: (forward of the broken model around the reference model m, the checks that must fail)
BROKEN = {
    "as it is": (lambda m, x: m(x), set()),
    "input rounded to 8 bits, no straight-through gradient": (lambda m, x: m(torch.round(x * 255) / 255),
                                                              {"gradients"}),
    "softmax outputs": (lambda m, x: F.softmax(m(x), 1), {"logits"}),
    "noise at inference": (lambda m, x: m(x + 0.05 * torch.randn_like(x)), {"deterministic", "batch independent"}),
    "dropout at inference": (lambda m, x: m(F.dropout(x, 0.1, training=True)), {"deterministic", "batch independent"}),
    "two classes swapped": (lambda m, x: m(x)[:, [1, 0, *range(2, 10)]], {"accuracy"}),
    "normalised twice": (lambda m, x: m((x - 0.5) / 0.5), {"preprocessing"}),
    "inputs expected in 0-255": (lambda m, x: m(x * 255), {"preprocessing"}),
}
# Logits times 1000 saturate the cross-entropy, not the model's gradient: the large-ε probe flags them
# (tests/test_evaluation_checks.py).


class Broken(nn.Module):
    def __init__(self, model: nn.Module, forward) -> None:
        super().__init__()
        self.model, self.broken = model, forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.broken(self.model, x)


@pytest.fixture(scope="module")
def reference():
    data = load_dataset("fashion-mnist")
    images, labels = data.tensors("test", balanced_subset(data.test_labels, 100, data.num_classes))
    return load_or_train(data).model.eval(), images, labels, list(data.class_names)


@pytest.mark.slow
@pytest.mark.parametrize("name", BROKEN)
def test_each_break_is_flagged_by_its_check(reference, name):
    model, images, labels, names = reference
    forward, expected = BROKEN[name]
    checks = model_checks(Broken(model, forward).eval(), images, labels, names)
    assert [c.name for c in checks] == ["accuracy", "preprocessing", "deterministic", "batch independent", "logits",
                                        "gradients"]
    failed = {c.name for c in checks if not c.passed}
    assert failed == expected, [c.message for c in checks if not c.passed]
    for check in checks:
        assert "\n" not in check.message and check.message


def test_a_class_classified_below_chance_is_named_with_where_it_went(reference):
    model, images, labels, names = reference
    swapped = Broken(model, BROKEN["two classes swapped"][0]).eval()
    (accuracy, *_) = model_checks(swapped, images, labels, names)
    assert "'T-shirt/top' (" in accuracy.message and "most as 'Trouser'" in accuracy.message
    assert "class order" in accuracy.message


def test_log_probabilities_are_logits_enough():
    model = nn.Identity()
    logits = torch.randn(8, 10)
    assert check_logits(model, F.log_softmax(logits, 1)).passed and check_logits(model, logits).passed
    assert not check_logits(model, F.softmax(logits, 1)).passed
    sigmoid = check_logits(model, torch.sigmoid(logits))
    assert sigmoid.passed and sigmoid.warning and "every value in [0, 1]" in sigmoid.message
    assert not check_logits(model, logits).warning


def test_probabilities_are_attacked_through_their_log(reference):
    """A model file returning softmax outputs is wrapped (with a warning) to return their log: the same
    predictions, the softmax's log equal to log_softmax of the logits, and the logits check passes with a warning.
    Logits, log-probabilities and outputs merely in [0, 1] (which may be logits) are left as they are; malformed
    outputs reach check_model's errors unwrapped."""
    model, images, labels, names = reference
    softmax = Broken(model, BROKEN["softmax outputs"][0]).eval()
    with pytest.warns(UserWarning, match=r"look like probabilities \(every row non-negative and summing to 1 on 8"):
        adapted = logits_adapter(softmax, images[:8])
    assert isinstance(adapted, LogOfProbabilities) and adapted.model is softmax
    with torch.no_grad():
        assert torch.allclose(adapted(images), F.log_softmax(model(images), 1), atol=1e-4)
    sigmoid = Broken(model, lambda m, x: torch.sigmoid(m(x))).eval()
    one_d = Broken(model, lambda m, x: torch.sigmoid(m(x))[:, 0]).eval()
    integers = Broken(model, lambda m, x: F.one_hot(m(x).argmax(1), 10)).eval()
    for left in (model, sigmoid, one_d, integers, Broken(model, lambda m, x: F.log_softmax(m(x), 1)).eval()):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert logits_adapter(left, images[:8]) is left
    with pytest.raises(ConfigError, match="expected a tensor of logits|shape"):
        check_model(one_d, images[:8], 10)
    with pytest.raises(ConfigError, match="torch.int64 outputs"):
        check_model(integers, images[:8], 10)
    checks = {c.name: c for c in model_checks(adapted, images, labels, names)}
    assert all(c.passed for c in checks.values()) and [n for n, c in checks.items() if c.warning] == ["logits"]
    assert warning_summary(list(checks.values())).startswith("logits: the model returns probabilities")


def test_bad_input_is_refused(reference):
    model, images, labels, names = reference
    with pytest.raises(ValueError, match="training mode"):
        model_checks(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).train(), images, labels, names)
    with pytest.raises(ValueError, match="one label each"):
        model_checks(model, images, labels[:5], names)
    with pytest.raises(ValueError, match="labels must lie in"):
        model_checks(model, images, labels, names[:5])


def _export(model: nn.Module, path):
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),),
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(path))
    return path


@pytest.mark.slow
def test_attack_prints_the_checks_and_result_json_records_them(reference, capsys, tmp_path):
    """`labelflip attack` on a user's .pt2 that returns probabilities: it is attacked through their log, with the
    logits check's warning printed before the figures and recorded in result.json, and flips what the model itself
    flips; the reference model passes all six checks with no warning."""
    from .helpers import run_cli

    model = reference[0]
    path = _export(Broken(model, BROKEN["softmax outputs"][0]).eval(), tmp_path / "softmax.pt2")
    common = ["--dataset", "fashion-mnist", "--attack", "fgsm", "--epsilon", "0.1", "--limit", "200"]
    with pytest.warns(UserWarning, match="look like probabilities .*labelflip attacks their log"):
        rc, out, err = run_cli(capsys, ["attack", *common, "--model", str(path), "--out", str(tmp_path / "run")])
    assert rc == 0, err
    assert out.splitlines()[:2] == [
        "model checks: all 6 passed",
        "model check warning: logits: the model returns probabilities (every row non-negative and summing to 1); "
        "the attacks use their log, whose gradients still vanish where the softmax saturates (the gradients check "
        "counts those): return the logits to be sure"], out
    softmax = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [(c["name"], c["passed"], c["warning"]) for c in softmax["model_checks"]] == [
        ("accuracy", True, False), ("preprocessing", True, False), ("deterministic", True, False),
        ("batch independent", True, False), ("logits", True, True), ("gradients", True, False)]
    rc, out, err = run_cli(capsys, ["attack", *common, "--out", str(tmp_path / "reference")])
    assert rc == 0 and out.splitlines()[0] == "model checks: all 6 passed" and "warning" not in out, (out, err)
    recorded = json.loads((tmp_path / "reference" / "result.json").read_text())
    # As many images as --limit asks for, balanced over the classes.
    assert all(c["passed"] and not c["warning"] for c in recorded["model_checks"])
    assert recorded["model_checks"][0]["figures"]["n"] == 200
    # The log of a softmax is the logits less a per-image constant: the same cross-entropy, the same flips, give
    # or take float rounding at the sign of a gradient.
    assert abs(softmax["flip_fraction"]["count"] - recorded["flip_fraction"]["count"]) <= 2, \
        (softmax["flip_fraction"], recorded["flip_fraction"])


GATE_ONLY_FGSM = ["-p", "no:xdist", "-p", "no:cacheprovider", "--labelflip-profile", "quick", "-k",
                  "fgsm or model or noise"]


@pytest.fixture(scope="module")
def swapped_pt2(tmp_path_factory):
    """The MNIST-5k reference with two classes swapped, as a .pt2. Exported outside pytester, whose teardown drops
    the modules first imported during its test: torch.export's, which must not be imported twice."""
    from labelflip_models.data import load_dataset

    model = load_or_train(load_dataset("mnist-5k")).model.eval()
    return _export(Broken(model, BROKEN["two classes swapped"][0]).eval(), tmp_path_factory.mktemp("m") / "swapped.pt2")


@pytest.mark.slow
def test_the_gate_refuses_baselines_of_a_model_that_fails_its_checks(swapped_pt2, pytester_gate, tmp_path):
    """A user's MNIST-5k model with two classes swapped: test_model_checks fails with the accuracy check's message,
    each case's tests and the white-noise test say they wrote no baseline and point at it, and no baseline file is
    written."""
    from .helpers import GATE_FILE

    path = swapped_pt2
    pytester_gate.makepyfile(test_gate=GATE_FILE)
    result = pytester_gate.runpytest_subprocess(*GATE_ONLY_FGSM, "--labelflip-model", str(path),
                                                "--labelflip-dataset", "mnist-5k", "--labelflip-baselines",
                                                str(tmp_path / "b"), "--labelflip-regen")
    out = result.stdout.str()
    assert "FAILED test_gate.py::test_model_checks[mnist-5k-model-checks]" in out
    assert "classes classified below chance: '0' (0/100 right, most as '1')" in out
    assert "not writing mnist-5k-fgsm-eps0.1's baseline: the model fails accuracy in " \
           "test_model_checks[mnist-5k-model-checks]" in out
    assert "not writing mnist-5k's white-noise baseline: the model fails accuracy" in out
    assert not list((tmp_path / "b").rglob("*.json")) if (tmp_path / "b").exists() else True


def test_no_honest_user_model_is_flagged():
    """The committed record of scripts/honest_model_checks.py: three honest user models (a .pt2 on PNG folders, a
    state dict with labelflip's architecture on an .npz, a torchvision ResNet-18 state dict on RGB data), each
    through `labelflip attack` and through the gate's evaluation tests, none flagged by any check."""
    from pathlib import Path

    from labelflip_models.gate.session import EVALUATION_TESTS

    record = json.loads((Path(__file__).parents[1] / "docs" / "zoo" / "model-checks-honest.json").read_text())
    assert record["schema"] == "labelflip.model-checks-honest/2"
    assert len(record["models"]) >= 3 and {"timestamp", "machine", "versions"} <= set(record["provenance"])
    for name, model in record["models"].items():
        assert [c["name"] for c in model["model_checks"]] == ["accuracy", "preprocessing", "deterministic",
                                                              "batch independent", "logits", "gradients"], name
        assert all(c["passed"] for c in model["model_checks"]), (name, model["model_checks"])
        assert model["stdout_first_line"] == "model checks: all 6 passed", name
        tests = model["gate"]["tests"]
        # Every evaluation test ran; attack strength only where the profile has an AutoAttack case at the ε.
        assert {t.partition("[")[0] for t in tests} == set(EVALUATION_TESTS), (name, sorted(tests))
        assert model["gate"]["exit_code"] == 0, (name, model["gate"])
        for test, outcome in tests.items():
            allowed = ("passed", "skipped") if test.startswith("test_attack_strength[") else ("passed",)
            assert outcome["outcome"] in allowed and outcome["decision_passed"] != "False", (name, test, outcome)
    assert record["flagged"] == {name: [] for name in record["models"]}
