import math

import pytest
import torch

from labelflip_models.attacks import FGSM, Bounds, LinfPGD, check_epsilon, make_attack, run_attack
from labelflip_models.errors import ConfigError
from labelflip_models.model_cache import load_or_train

from .helpers import TINY_RECIPE, tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = tiny_dataset()
    model = load_or_train(data, recipe=TINY_RECIPE, root=tmp_path_factory.mktemp("cache")).model
    return model, *data.tensors("test")


@pytest.mark.parametrize("attack", [FGSM(), LinfPGD(steps=5)])
def test_adversarials_respect_epsilon_and_bounds(tiny, attack):
    model, x, y = tiny
    result = run_attack(model, x, y, attack, 0.05, batch_size=16)
    assert result.clipped.shape == x.shape and result.raw.shape == x.shape
    assert result.linf_norms.max() <= 0.05 + 1e-6
    assert result.clipped.min() >= 0 and result.clipped.max() <= 1
    assert result.success.dtype == torch.bool and len(result.success) == len(x)
    assert result.params["name"] == attack.name and result.params["epsilon"] == 0.05


def test_same_seed_same_adversarials_other_seed_differs(tiny):
    model, x, y = tiny
    a = run_attack(model, x, y, LinfPGD(steps=3), 0.1, seed=7)
    b = run_attack(model, x, y, LinfPGD(steps=3), 0.1, seed=7)
    c = run_attack(model, x, y, LinfPGD(steps=3), 0.1, seed=8)
    assert torch.equal(a.clipped, b.clipped) and torch.equal(a.adv_pred, b.adv_pred)
    assert not torch.equal(a.clipped, c.clipped)


def test_landed_uses_clean_prediction_for_misclassified_images(tiny):
    model, x, y = tiny
    result = run_attack(model, x, y, FGSM(), 0.01)
    wrong = result.clean_pred != y
    assert wrong.any(), "the tiny model is expected to misclassify some random images"
    assert torch.equal(result.landed[wrong], result.clean_pred[wrong])
    assert torch.equal(result.landed[~wrong], result.adv_pred[~wrong])


@pytest.mark.parametrize("eps", [-0.1, 0.0, math.nan, math.inf, 1.5])
def test_invalid_epsilon(eps):
    with pytest.raises(ConfigError, match="epsilon"):
        check_epsilon(eps, Bounds())


def test_bounds_must_be_ordered():
    with pytest.raises(ConfigError, match="lower < upper"):
        Bounds(1.0, 0.0)


def test_model_in_training_mode_is_refused(tiny):
    model, x, y = tiny
    model.train()
    try:
        with pytest.raises(ConfigError, match="training mode"):
            run_attack(model, x, y, FGSM(), 0.1)
    finally:
        model.eval()


def test_unknown_attack_names_the_choices():
    with pytest.raises(ConfigError, match="fgsm, linf-pgd"):
        make_attack("deepfool")
