"""Drift, per (dataset, attack, ε): how symmetric the flip matrix is, which classes absorb the flips, each class's
dominant flip target, and where uniform noise lands (the paper's findings). These are fingerprints of the weights,
which every retrain changes, not losses of robustness: a change is recorded and reported as drift (the terminal
section, the report, JUnit properties), and fails only with --labelflip-fail-on-drift."""

from __future__ import annotations

import pytest

from labelflip_models.analysis.flip_matrix import matrix_from_json
from labelflip_models.gate.decisions import (
    SYMMETRY_NORMS,
    Decision,
    check_catch_all,
    check_dominant_targets,
    check_noise,
    check_symmetry,
)
from labelflip_models.gate.tests import gate_test

__all__ = ["test_catch_all_classes", "test_dominant_targets", "test_symmetry_score", "test_white_noise"]


def judge_drift(record, config, check: str, decision: Decision, what: str, **figures: object) -> None:
    """Record the decision, as drift where it changed; fail only under --labelflip-fail-on-drift."""
    record(check, decision, drift="no" if decision.passed else "yes", **figures)
    if not decision.passed and config.fail_on_drift:
        pytest.fail(f"{what} (drift; failing under --labelflip-fail-on-drift): {decision.message}", pytrace=False)


@gate_test("all")
@pytest.mark.parametrize("norm", SYMMETRY_NORMS)
def test_symmetry_score(labelflip_case, norm, labelflip_run, labelflip_baseline, labelflip_config, labelflip_record):
    now = labelflip_run(labelflip_case).result["analysis"]["symmetry"][norm]
    decision = check_symmetry(norm, now, labelflip_baseline["gate"]["symmetry"][norm])
    judge_drift(labelflip_record, labelflip_config, "symmetry", decision,
                f"{labelflip_case.id}: flip symmetry changed", case=labelflip_case.id, norm=norm)


@gate_test("all")
def test_catch_all_classes(labelflip_case, labelflip_run, labelflip_baseline, labelflip_config, labelflip_record):
    catch = labelflip_run(labelflip_case).result["analysis"]["catch_all"]
    decision = check_catch_all(catch["shares"], catch["flips"], labelflip_baseline["gate"]["catch_all"])
    judge_drift(labelflip_record, labelflip_config, "catch_all", decision,
                f"{labelflip_case.id}: catch-all classes changed", case=labelflip_case.id)


@gate_test("all")
def test_dominant_targets(labelflip_case, labelflip_run, labelflip_baseline, labelflip_config, labelflip_record):
    result = labelflip_run(labelflip_case).result
    decision = check_dominant_targets(matrix_from_json(result["flip_matrix"]), result["class_names"],
                                      labelflip_baseline["gate"]["dominant_targets"])
    judge_drift(labelflip_record, labelflip_config, "dominant_targets", decision,
                f"{labelflip_case.id}: dominant flip targets changed", case=labelflip_case.id)


@gate_test()
def test_white_noise(labelflip_noise_dataset, labelflip_noise, labelflip_noise_baseline, labelflip_config,
                     labelflip_record):
    probe = labelflip_noise(labelflip_noise_dataset)
    decision = check_noise(probe["counts"], labelflip_noise_baseline["result"]["counts"], probe["class_names"])
    judge_drift(labelflip_record, labelflip_config, "white_noise", decision,
                f"{labelflip_noise_dataset}: white noise lands elsewhere",
                case=f"{labelflip_noise_dataset}-white-noise")
