"""The robustness gate: for every (dataset, attack, ε) of the profile, the adversarials respect their
budget, no class flips significantly more often than in its baseline, and the attack is not weaker."""

from __future__ import annotations

import pytest
import torch

from labelflip_models.gate import check_attack_success, check_flip_rate

pytestmark = pytest.mark.labelflip

# Float rounding in x + δ may overshoot ε by a few ulps; anything larger is a broken projection.
EPSILON_TOLERANCE = 1e-6


def test_epsilon_bound(labelflip_case, labelflip_run):
    run = labelflip_run(labelflip_case)
    lower, upper = run.result["attack"]["bounds"]
    norms = (run.clipped - run.images).flatten(1).abs().amax(1)
    over = torch.nonzero(norms > labelflip_case.epsilon + EPSILON_TOLERANCE).flatten()
    assert len(over) == 0, (f"{len(over)} adversarials exceed ε={labelflip_case.epsilon}: images "
                            f"{over[:10].tolist()} with L∞ norms {norms[over[:10]].tolist()}")
    assert run.clipped.min() >= lower and run.clipped.max() <= upper, (
        f"adversarials leave the input bounds [{lower}, {upper}]: range "
        f"[{run.clipped.min().item()}, {run.clipped.max().item()}]")


def test_class_flip_rate(labelflip_case, labelflip_class, labelflip_run, labelflip_baseline):
    result = labelflip_run(labelflip_case).result
    name = result["class_names"][labelflip_class]
    observed = result["per_class_flip_rate"][name]
    decision = check_flip_rate(name, observed["count"], observed["n"], labelflip_baseline["thresholds"][name])
    assert decision.passed, f"{labelflip_case.id}: flip rate regressed: {decision.message}"


def test_attack_success(labelflip_case, labelflip_run, labelflip_baseline):
    success = labelflip_run(labelflip_case).result["attack_success"]
    decision = check_attack_success(success["count"], success["n"], labelflip_baseline["min_success"])
    assert decision.passed, (f"{labelflip_case.id}: the attack got weaker, which would hide regressions: "
                             f"{decision.message}")
