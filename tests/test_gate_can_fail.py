"""The gate run for real on the `quick` profile: an unchanged reference model passes its committed
baselines; the same model with noise in its weights fails the per-class flip-rate tests."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATE_FILES = {name: (REPO / "robustness_tests" / f"{name}.py").read_text()
              for name in ("test_gate", "test_flip_structure")}
# Relative to each weight tensor's own spread. Measured on MNIST-5k: clean accuracy 0.984 -> 0.977 (the
# regression an accuracy check misses), LinfPGD ε=0.1 flip fraction 0.118 -> 0.252.
WEIGHT_NOISE = 0.5

WEAKENED_CONFTEST = f"""
import copy

import pytest
import torch


@pytest.fixture(scope="session")
def labelflip_model(labelflip_reference_model):
    weakened = {{}}

    def get(data):
        if data.name not in weakened:
            model = labelflip_reference_model(data)
            noisy = copy.deepcopy(model)
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in noisy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * {WEIGHT_NOISE} * p.std())
            weakened[data.name] = noisy
        return weakened[data.name]

    return get
"""


def run_gate(pytester_gate):
    pytester_gate.makepyfile(**GATE_FILES)
    return pytester_gate.runpytest_subprocess(
        "-p", "no:xdist", "-p", "no:cacheprovider", "--labelflip-profile", "quick",
        "--labelflip-baselines", str(REPO / "fixtures" / "baselines"))


QUICK_GATE_TESTS = 49  # 3 cases (FGSM, LinfPGD, L2 DeepFool) of the quick profile, plus its white-noise probe
CORRECTNESS = ("test_epsilon_bound", "test_minimal_adversarials", "test_attack_success")


@pytest.mark.slow
def test_unchanged_model_passes(pytester_gate):
    result = run_gate(pytester_gate)
    result.assert_outcomes(passed=QUICK_GATE_TESTS)


@pytest.mark.slow
def test_weakened_model_fails_per_class_flip_rates(pytester_gate):
    pytester_gate.makeconftest(WEAKENED_CONFTEST)
    result = run_gate(pytester_gate)
    outcomes = result.parseoutcomes()
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    print("\n".join(failed))
    flip_failures = [line for line in failed if "test_class_flip_rate" in line]
    norm_failures = [line for line in failed if "test_class_min_norm" in line]
    assert len(flip_failures) >= 3, result.stdout.str()
    assert len(norm_failures) >= 1, result.stdout.str()
    # Budgets still hold, reported norms are real, and the attacks did not get weaker.
    assert not [line for line in failed if any(name in line for name in CORRECTNESS)]
    assert outcomes["failed"] == len(failed) and outcomes["passed"] == QUICK_GATE_TESTS - len(failed)
