import inspect
import json
import math
from dataclasses import fields, replace

import foolbox as fb
import numpy as np
import pytest
import torch
from torch import nn

from labelflip_models.attacks import (
    ATTACKS,
    FGSM,
    L2PGD,
    AttackResult,
    Bounds,
    LinfPGD,
    check_epsilon,
    check_epsilon_for,
    describe,
    make_attack,
    run_attack,
)
from labelflip_models.attacks.autoattack import AUTOATTACKS
from labelflip_models.errors import ConfigError
from labelflip_models.runs.results import summarize

# Foolbox's class behind each attack name, to check our defaults and plumbing against its own signature.
FOOLBOX_CLASSES = {
    "fgsm": fb.attacks.FGSM, "linf-pgd": fb.attacks.LinfPGD, "l2-pgd": fb.attacks.L2PGD,
    "l2-cw": fb.attacks.L2CarliniWagnerAttack, "l0-bb": fb.attacks.L0BrendelBethgeAttack,
    "l1-bb": fb.attacks.L1BrendelBethgeAttack, "l2-deepfool": fb.attacks.L2DeepFoolAttack,
    "linf-deepfool": fb.attacks.LinfDeepFoolAttack,
}
KINDS = {  # name: (norm, minimal)
    "fgsm": ("linf", False), "linf-pgd": ("linf", False), "l2-pgd": ("l2", False), "l2-cw": ("l2", True),
    "l0-bb": ("l0", True), "l1-bb": ("l1", True), "l2-deepfool": ("l2", True), "linf-deepfool": ("linf", True),
}
# Few steps keep the minimal attacks to seconds on the tiny model.
QUICK_MINIMAL = {
    # C&W needs a const large enough for the linear model's margins: from Foolbox's 1e-3, 3 x 20 steps find nothing
    # (Foolbox's own engine then returns blank images, which the linear model happens to misclassify).
    "l2-cw": {"binary_search_steps": 2, "steps": 50, "stepsize": 0.05, "initial_const": 10.0},
    "l2-deepfool": {"steps": 10},
    "linf-deepfool": {"steps": 10},
    "l0-bb": {"steps": 10},
    "l1-bb": {"steps": 10},
}
# Brendel-Bethge compiles its numba solver on first use: about 30 s per attack and process.
SLOW = {"l0-bb", "l1-bb"}


def _minimal_cases(names=QUICK_MINIMAL):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.fixture(scope="module")
def linear():
    """A random linear classifier with labels chosen so that exactly the even-numbered images are correct:
    every image has adversarials, and their minimal distances have closed forms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(16) % 2 == 0, pred, (pred + 1) % 10)
    return model, x, y


def _linear_min_distance(model, x, y, norm):
    """Distance from each image to the nearest point (unconstrained by the pixel bounds) where another class's
    logit reaches its own: min over k of (l_y - l_k) / ||w_y - w_k||_dual, with the dual of the attack's norm."""
    weight = model[1].weight.detach().numpy().astype(np.float64)
    bias = model[1].bias.detach().numpy().astype(np.float64)
    flat = x.flatten(1).numpy().astype(np.float64)
    logits = flat @ weight.T + bias
    dual = {"l2": 2, "linf": 1, "l1": np.inf}[norm]
    out = []
    for logit, label in zip(logits, y.numpy()):
        others = [k for k in range(10) if k != label]
        gaps = logit[label] - logit[others]
        out.append(np.min(gaps / np.linalg.norm(weight[label] - weight[others], ord=dual, axis=1)))
    return torch.tensor(out, dtype=torch.float32)


class ConstantModel(nn.Module):
    """Predicts class 0 for every input; the zero-weighted input term gives attacks a (zero) gradient."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.arange(num_classes, 0, -1, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + 0 * x.flatten(1).sum(1, keepdim=True)


def _numpy_norms(delta: np.ndarray, norm: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1)
    if norm == "l0":
        return np.count_nonzero(flat, axis=1).astype(float)
    return np.linalg.norm(flat, ord={"linf": np.inf, "l2": 2, "l1": 1}[norm], axis=1)


@pytest.mark.parametrize("attack", [FGSM(), LinfPGD(steps=5)])
def test_adversarials_respect_epsilon_and_bounds(tiny, attack):
    model, x, y = tiny
    result = run_attack(model, x, y, attack, 0.05, batch_size=16)
    assert result.clipped.shape == x.shape and result.raw.shape == x.shape
    assert result.linf_norms.max() <= 0.05 + 1e-6
    assert result.clipped.min() >= 0 and result.clipped.max() <= 1
    assert result.success.dtype == torch.bool and len(result.success) == len(x)
    assert result.params["name"] == attack.name and result.params["epsilon"] == 0.05


@pytest.mark.parametrize("name, epsilon", [("fgsm", 0.05), ("linf-pgd", 0.05), ("l2-pgd", 1.0)])
def test_fixed_attacks_stay_within_epsilon_in_their_norm(tiny, name, epsilon):
    model, x, y = tiny
    attack = make_attack(name, **({} if name == "fgsm" else {"steps": 5}))
    result = run_attack(model, x, y, attack, epsilon, batch_size=16)
    assert result.norm == KINDS[name][0]
    assert result.norms.max() <= epsilon * (1 + 1e-5)
    assert result.clipped.min() >= 0 and result.clipped.max() <= 1
    assert result.attacked.all() and result.attacked.dtype == torch.bool
    assert torch.equal(result.adv_pred, model(result.clipped).argmax(1))
    assert result.params["norm"] == KINDS[name][0] and result.params["minimal"] is False


def test_l2_pgd_moves_further_than_linf_would_allow(tiny):
    # ε = 1 in L2 spread over 784 pixels: the L∞ size of each step is far below 1, but the L2 size reaches 1.
    model, x, y = tiny
    result = run_attack(model, x, y, L2PGD(steps=5), 1.0)
    assert result.norms.max() > 0.5 and result.linf_norms.max() < 1.0


@pytest.mark.parametrize("name", _minimal_cases())
def test_minimal_attacks_find_adversarials_for_correct_images_only(linear, name):
    model, x, y = linear
    result = run_attack(model, x, y, make_attack(name, **QUICK_MINIMAL[name]), batch_size=8)
    correct = result.clean_pred == y
    assert torch.equal(correct, torch.arange(len(y)) % 2 == 0)
    assert result.epsilon is None and result.params["epsilon"] is None and result.params["minimal"] is True
    assert result.norm == KINDS[name][0]
    assert torch.equal(result.attacked, correct)
    assert result.clipped.min() >= 0 and result.clipped.max() <= 1
    # Success means the returned image really is misclassified, and only attacked images can succeed.
    assert torch.equal(result.adv_pred, model(result.clipped).argmax(1))
    assert (result.adv_pred[result.success] != y[result.success]).all()
    assert not result.success[~correct].any()
    assert result.success.sum() >= correct.sum() // 2, f"{name} failed on most images of a linear model"
    norms = result.norms
    assert torch.isfinite(norms).all()
    assert (norms[~correct] == 0).all() and (norms[result.success] > 0).all()
    # A failed attack leaves the image as it was.
    failed = correct & ~result.success
    assert torch.equal(result.clipped[failed], x[failed])
    assert torch.equal(result.landed[~correct], result.clean_pred[~correct])
    if name != "l0-bb":  # no closed form for the L0 distance to a linear boundary
        bound = _linear_min_distance(model, x, y, KINDS[name][0])
        assert (norms[result.success] >= bound[result.success] * (1 - 1e-4)).all()


@pytest.mark.parametrize("name", _minimal_cases())
def test_minimal_attacks_keep_their_invariants_on_a_model_they_cannot_fool(tiny, name):
    # The tiny model's logits barely depend on the input: it says the same class for every image, with a margin
    # the few attack steps cannot overcome. Whatever fails must leave the images untouched.
    model, x, y = tiny
    result = run_attack(model, x, y, make_attack(name, **QUICK_MINIMAL[name]), batch_size=16)
    correct = result.clean_pred == y
    assert torch.equal(result.attacked, correct) and correct.any()
    assert result.clipped.min() >= 0 and result.clipped.max() <= 1
    assert (result.adv_pred[result.success] != y[result.success]).all()
    assert torch.equal(result.clipped[~result.success], x[~result.success])
    assert torch.isfinite(result.norms).all()


def test_l2_deepfool_reaches_a_linear_boundary_almost_exactly(linear):
    # For a linear model DeepFool's first step lands on the nearest boundary (then overshoots by 2%); the box
    # constraint can only push it slightly further.
    model, x, y = linear
    result = run_attack(model, x, y, make_attack("l2-deepfool"))
    assert torch.equal(result.success, result.attacked)
    bound = _linear_min_distance(model, x, y, "l2")[result.success]
    ratio = result.norms[result.success] / bound
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.1).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1", "l0"])
def test_norms_measure_the_clipped_perturbation_in_the_attacks_norm(norm):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=gen)
    clipped = images.clone()
    clipped[1:, 0, :2] += 0.1 * torch.randn(5, 2, 4, generator=gen)  # image 0 unchanged; others: 8 entries changed
    result = AttackResult(
        epsilon=None, norm=norm, images=images, labels=torch.zeros(6, dtype=torch.long), raw=clipped,
        clipped=clipped, success=torch.ones(6, dtype=torch.bool), attacked=torch.ones(6, dtype=torch.bool),
        clean_pred=torch.zeros(6, dtype=torch.long), adv_pred=torch.ones(6, dtype=torch.long), seconds=0.0)
    expected = _numpy_norms((clipped - images).numpy(), norm)
    np.testing.assert_allclose(result.norms.numpy(), expected, rtol=1e-6)
    assert result.norms[0] == 0
    if norm == "l0":
        assert result.norms[1:].tolist() == [8.0] * 5


def test_same_seed_same_result_for_a_minimal_attack(tiny):
    model, x, y = tiny
    attack = make_attack("l2-cw", binary_search_steps=2, steps=10)
    a, b = (run_attack(model, x, y, attack, seed=3) for _ in range(2))
    assert torch.equal(a.clipped, b.clipped) and torch.equal(a.success, b.success)
    assert torch.equal(a.norms, b.norms)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["l0-bb", "l1-bb"])
def test_brendel_bethge_records_inputs_without_a_starting_point_as_failures(name):
    # The model says 0 whatever the input: images of class 0 have no adversarial at all, and all others
    # are misclassified already. Foolbox's own initialisation would abort the whole batch here.
    model = ConstantModel().eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 2, 0, 3, 4, 0])
    result = run_attack(model, x, y, make_attack(name, steps=5), batch_size=4)
    zero = y == 0
    assert torch.equal(result.attacked, zero)
    assert not result.success.any()
    assert torch.equal(result.clipped, x) and (result.norms == 0).all()
    assert torch.equal(result.landed, torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("name", ["fgsm", "linf-pgd", "l2-pgd", "l2-deepfool", "linf-deepfool"])
def test_attacks_survive_a_model_with_no_adversarials(name):
    model = ConstantModel().eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 0, 5, 0])
    epsilon = None if KINDS[name][1] else 0.3
    result = run_attack(model, x, y, make_attack(name), epsilon)
    assert not result.success[y == 0].any()
    assert torch.equal(result.landed, torch.zeros(4, dtype=torch.long))


def test_registry_names_norms_and_kinds():
    # Beside Foolbox's attacks, the AutoAttack family (tests/test_autoattack.py), all fixed-ε.
    autoattacks = {cls.name: cls for cls in AUTOATTACKS}
    assert {name: (cls.norm, cls.minimal) for name, cls in ATTACKS.items() if name not in autoattacks} == KINDS
    assert {name: ATTACKS[name] for name in autoattacks} == autoattacks
    assert not any(cls.minimal for cls in AUTOATTACKS) and {cls.norm for cls in AUTOATTACKS} == {"linf", "l2"}
    assert all(cls.name == name for name, cls in ATTACKS.items())


@pytest.mark.parametrize("name", list(KINDS))
def test_defaults_are_foolboxs(name):
    signature = inspect.signature(FOOLBOX_CLASSES[name].__init__).parameters
    attack = ATTACKS[name]()
    for f in fields(attack):
        assert getattr(attack, f.name) == signature[f.name].default, f.name


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.1
    return "crossentropy"  # DeepFool's only string parameter, whose default is "logits"


@pytest.mark.parametrize("name", list(KINDS))
def test_parameters_reach_foolbox(name):
    defaults = ATTACKS[name]()
    overrides = {f.name: _changed(getattr(defaults, f.name)) for f in fields(defaults)}
    attack = make_attack(name, **overrides)
    engine = attack.foolbox()
    assert type(engine) is FOOLBOX_CLASSES[name]
    for key, value in overrides.items():
        assert getattr(engine, key) == value, key


def test_describe_is_json_ready_and_complete():
    for name in KINDS:
        attack = make_attack(name)
        described = json.loads(json.dumps(describe(attack)))
        assert described["name"] == name
        assert (described["norm"], described["minimal"]) == KINDS[name]
        assert all(described[f.name] == getattr(attack, f.name) for f in fields(attack))
    assert "deepfool" in describe(make_attack("l1-bb"))["starting_points"]


@pytest.mark.parametrize("name, params, message", [
    ("linf-pgd", {"steps": 0}, "steps must be a whole number >= 1, got 0"),
    ("linf-pgd", {"steps": 2.5}, "steps must be a whole number"),
    ("l2-cw", {"stepsize": -1.0}, "stepsize must be a positive finite number"),
    ("l2-cw", {"confidence": math.nan}, "confidence must be a finite number >= 0"),
    ("fgsm", {"random_start": "yes"}, "random_start must be true or false"),
    ("l2-deepfool", {"loss": "hinge"}, "loss must be one of 'logits', 'crossentropy'"),
    ("linf-deepfool", {"candidates": 1}, "candidates must be a whole number >= 2"),
    ("l1-bb", {"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
    ("l0-bb", {"lr_decay": 0.0}, r"lr_decay must be a number in \(0, 1\]"),
])
def test_invalid_parameter_values_are_config_errors(name, params, message):
    with pytest.raises(ConfigError, match=f"attack '{name}': {message}"):
        make_attack(name, **params)


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ConfigError, match="no parameter 'epsilon'; its parameters are: steps, rel_stepsize"):
        make_attack("linf-pgd", epsilon=0.1)


def test_minimal_attack_refuses_epsilon_and_fixed_attack_needs_one(tiny):
    model, x, y = tiny
    with pytest.raises(ConfigError, match="l2-deepfool is a minimal-perturbation attack and takes no epsilon"):
        run_attack(model, x, y, make_attack("l2-deepfool"), 0.1)
    with pytest.raises(ConfigError, match="fgsm is a fixed-epsilon attack and needs an epsilon"):
        run_attack(model, x, y, FGSM())


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


@pytest.mark.parametrize("eps", [-1.0, math.inf])
def test_invalid_l2_epsilon(eps):
    with pytest.raises(ConfigError, match="positive finite"):
        check_epsilon(eps, Bounds(), "l2")


def test_l2_epsilon_may_exceed_the_bounds_width():
    # sqrt(784) ≈ 28 is the L2 distance between an all-black and an all-white 28x28 image.
    assert check_epsilon(3.0, Bounds(), "l2") == 3.0
    with pytest.raises(ConfigError, match="unknown norm 'l3'"):
        check_epsilon(0.1, Bounds(), "l3")


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
    with pytest.raises(ConfigError, match="unknown attack 'boundary'; choose one of: fgsm, linf-pgd, l2-pgd, "
                                          "l2-cw, l0-bb, l1-bb, l2-deepfool, linf-deepfool"):
        make_attack("boundary")


def test_check_epsilon_for_follows_the_attack_kind():
    assert check_epsilon_for(L2PGD(), 2.0, Bounds()) == 2.0
    assert check_epsilon_for(make_attack("l1-bb"), None, Bounds()) is None
    with pytest.raises(ConfigError, match="exceeds the width"):
        check_epsilon_for(FGSM(), 2.0, Bounds())
    with pytest.raises(ConfigError, match="l2-cw is a minimal-perturbation attack and takes no epsilon"):
        check_epsilon_for(make_attack("l2-cw"), 0.5, Bounds())


def test_rounding_to_8_bits_lands_on_the_grid_within_half_a_level():
    bounds = Bounds(-1.0, 1.0)
    x = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    levels = (bounds.to_8bit(x) + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.min() >= 0 and levels.max() <= 255
    assert (bounds.to_8bit(x) - x).abs().max() <= bounds.width / 510 + 1e-6


@pytest.mark.parametrize("name, epsilon", [("linf-pgd", 0.1), ("l2-deepfool", None)])
def test_a_run_records_which_flips_survive_8_bit_rounding(linear, name, epsilon):
    """survives_8bit counts the flipped images whose rounded adversarial the model still misclassifies."""
    model, x, y = linear
    result = run_attack(model, x, y, make_attack(name), epsilon)
    with torch.no_grad():
        rounded = model(Bounds().to_8bit(result.clipped)).argmax(1)
    flipped = (result.clean_pred == y) & (result.adv_pred != y)
    assert torch.equal(result.rounded_pred, rounded)
    assert result.survives_8bit == (int((flipped & (rounded != y)).sum()), int(flipped.sum()))
    assert result.survives_8bit[1] > 0
    summary = summarize(result, [str(i) for i in range(10)])
    assert (summary["survives_8bit"]["count"], summary["survives_8bit"]["n"]) == result.survives_8bit


def test_a_run_of_chunks_reports_8_bit_figures_only_if_every_chunk_has_them(linear):
    """Chunks stored by an earlier version (no rounded predictions) beside new ones: no figure rather than a crash."""
    model, x, y = linear
    parts = [run_attack(model, x[i:i + 8], y[i:i + 8], make_attack("fgsm"), 0.1) for i in (0, 8)]
    both = AttackResult.concat(parts, parts[0].params)
    assert torch.equal(both.rounded_pred, torch.cat([p.rounded_pred for p in parts]))
    for old in (0, 1):
        mixed = [replace(p, rounded_pred=None) if i == old else p for i, p in enumerate(parts)]
        assert AttackResult.concat(mixed, parts[0].params).rounded_pred is None
