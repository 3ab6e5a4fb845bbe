"""The gate on where flips go (the paper's findings), per (dataset, attack, ε): how symmetric the flip matrix is,
which classes absorb the flips, each class's dominant flip target, and where uniform noise lands."""

from __future__ import annotations

import pytest

from labelflip_models.analysis.flip_matrix import matrix_from_json
from labelflip_models.gate.decisions import (
    SYMMETRY_NORMS,
    check_catch_all,
    check_dominant_targets,
    check_noise,
    check_symmetry,
)
from labelflip_models.gate.tests import gate_test

__all__ = ["test_catch_all_classes", "test_dominant_targets", "test_symmetry_score", "test_white_noise"]


@gate_test("all")
@pytest.mark.parametrize("norm", SYMMETRY_NORMS)
def test_symmetry_score(labelflip_case, norm, labelflip_run, labelflip_baseline, labelflip_record):
    now = labelflip_run(labelflip_case).result["analysis"]["symmetry"][norm]
    decision = check_symmetry(norm, now, labelflip_baseline["gate"]["symmetry"][norm])
    labelflip_record("symmetry", decision, case=labelflip_case.id, norm=norm)
    assert decision.passed, f"{labelflip_case.id}: flip symmetry changed: {decision.message}"


@gate_test("all")
def test_catch_all_classes(labelflip_case, labelflip_run, labelflip_baseline, labelflip_record):
    catch = labelflip_run(labelflip_case).result["analysis"]["catch_all"]
    decision = check_catch_all(catch["shares"], catch["flips"], labelflip_baseline["gate"]["catch_all"])
    labelflip_record("catch_all", decision, case=labelflip_case.id)
    assert decision.passed, f"{labelflip_case.id}: catch-all classes changed: {decision.message}"


@gate_test("all")
def test_dominant_targets(labelflip_case, labelflip_run, labelflip_baseline, labelflip_record):
    result = labelflip_run(labelflip_case).result
    decision = check_dominant_targets(matrix_from_json(result["flip_matrix"]), result["class_names"],
                                      labelflip_baseline["gate"]["dominant_targets"])
    labelflip_record("dominant_targets", decision, case=labelflip_case.id)
    assert decision.passed, f"{labelflip_case.id}: dominant flip targets changed: {decision.message}"


@gate_test()
def test_white_noise(labelflip_noise_dataset, labelflip_noise, labelflip_noise_baseline, labelflip_record):
    probe = labelflip_noise(labelflip_noise_dataset)
    decision = check_noise(probe["counts"], labelflip_noise_baseline["result"]["counts"], probe["class_names"])
    labelflip_record("white_noise", decision, case=f"{labelflip_noise_dataset}-white-noise")
    assert decision.passed, f"{labelflip_noise_dataset}: white noise lands elsewhere: {decision.message}"
