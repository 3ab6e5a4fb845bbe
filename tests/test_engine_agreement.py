"""The fast engine (native kernels, bf16 autocast) against the reference (Foolbox, fp32) on a trained model.

Decision rule, on the images of the smoke profile's cases: the two engines' flip rates must not differ
significantly (exact McNemar p > 0.01), and the 99% upper bound of the share of images whose adversarial lands in
a different class must stay below 5%. Measured on the Fashion-MNIST reference model, CPU: 0.8% of images differ.
"""

import numpy as np
import pytest

from labelflip_models.agreement import paired_agreement
from labelflip_models.attacks import make_attack, run_attack
from labelflip_models.data import balanced_subset, load_dataset
from labelflip_models.model_cache import load_or_train

MAX_DISAGREEMENT = 0.05
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
    assert stats.disagree_upper < MAX_DISAGREEMENT, f"adversarials land elsewhere too often: {stats}"


def test_agreement_detects_a_different_engine():
    # The rule must be able to fail: a run that flips 10% more of the images is caught.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    a = np.where(rng.random(500) < 0.5, (labels + 1) % 10, labels)
    b = np.where(rng.random(500) < 0.1, (labels + 2) % 10, a)
    stats = paired_agreement(labels, a, b)
    assert stats.mcnemar_p < MIN_P or stats.disagree_upper > MAX_DISAGREEMENT
    same = paired_agreement(labels, a, a)
    assert same.disagree == 0 and same.mcnemar_p == 1.0
