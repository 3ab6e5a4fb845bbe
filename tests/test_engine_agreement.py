"""The fast engine (native kernels, bf16 autocast) against the reference (Foolbox, fp32) on a trained model.

Decision rule, on 50 test images per class: the two engines' flip rates must not differ significantly (exact
McNemar p > 0.01), nor the classes the images land in (Stuart-Maxwell p > 0.01: the flip matrices' columns), and
the 99% upper bound of the share of single images landing elsewhere must stay below 15%. Measured on the
Fashion-MNIST reference model, CPU: 3.2% (FGSM ε=0.05) and 7.2% (FGSM ε=0.2) of single images land elsewhere, at
McNemar p = 0.45 and 1.0; a single large step turns bf16 rounding of near-zero gradient entries into different
signs, which moves adversarials near a boundary.
"""

import numpy as np
import pytest

from labelflip_models.analysis.agreement import paired_agreement
from labelflip_models.attacks import make_attack, run_attack
from labelflip_models.data import balanced_subset, load_dataset
from labelflip_models.models.cache import load_or_train

MAX_DISAGREEMENT = 0.15
MIN_P = 0.01

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
    data = load_dataset("fashion-mnist")
    images, labels = data.tensors("test", balanced_subset(data.test_labels, 50, data.num_classes))
    return load_or_train(data).model, images, labels


@pytest.mark.parametrize("attack, epsilon", [("fgsm", 0.05), ("fgsm", 0.2), ("linf-pgd", 0.05), ("l2-pgd", 1.0)])
def test_fast_engine_flips_like_foolbox(reference, attack, epsilon):
    model, images, labels = reference
    runs = {engine: run_attack(model, images, labels, make_attack(attack), epsilon, engine=engine)
            for engine in ("native", "foolbox")}
    stats = paired_agreement(labels.numpy(), runs["native"].adv_pred.numpy(), runs["foolbox"].adv_pred.numpy())
    assert stats.mcnemar_p > MIN_P, f"flip rates differ: {stats}"
    assert stats.marginal_p > MIN_P, f"images land in different classes: {stats}"
    assert stats.disagree_upper < MAX_DISAGREEMENT, f"adversarials land elsewhere too often: {stats}"


def test_agreement_detects_a_different_engine():
    # The rule must be able to fail: a run that flips 10% more of the images is caught.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    a = np.where(rng.random(500) < 0.5, (labels + 1) % 10, labels)
    b = np.where(rng.random(500) < 0.1, (labels + 2) % 10, a)
    stats = paired_agreement(labels, a, b)
    assert stats.mcnemar_p < MIN_P  # 29 more images flipped
    # Same flip rate, but 6% of the images land on class 6 instead (an engine that favours a catch-all class).
    c = np.where((a != labels) & (labels != 6) & (rng.random(500) < 0.12), 6, a)
    shifted = paired_agreement(labels, a, c)
    assert shifted.mcnemar_p == 1.0 and shifted.marginal_p < MIN_P
    same = paired_agreement(labels, a, a)
    assert same.disagree == 0 and same.mcnemar_p == 1.0 and same.marginal_p == 1.0


def test_stuart_maxwell_reduces_to_mcnemar_for_two_classes():
    # With two categories the statistic is McNemar's (b - c)^2 / (b + c): here b = 10, c = 0.
    from scipy.stats import chi2

    from labelflip_models.analysis.agreement import stuart_maxwell_p

    a = np.array([0] * 50 + [1] * 50)
    b = a.copy()
    b[:10] = 1
    assert stuart_maxwell_p(a, b) == pytest.approx(chi2.sf(10.0, 1))
    assert stuart_maxwell_p(a, a) == 1.0
