"""labelflip's kernels for L2/L∞ DeepFool and L2 Carlini-Wagner (`attacks/minimal_kernels.py`) against Foolbox 3.3.4,
the reference they follow.

Fast tests use a random linear classifier, where DeepFool's steps have closed forms. The slow test compares the
fp32 native kernels with Foolbox on 10 test images per class of the Fashion-MNIST reference model (90 of them
classified correctly, so attacked). Measured there (2-core AMD EPYC CPU, fp32, 2026-11-30): the same success on
every attacked image for all three attacks (C&W: once Foolbox's blank-image "adversarials", 24 of its 82 successes
at 4 x 50 steps, count as the failures they are, as the reference engine now counts them), the same landed class
for every image, and per-image minimal norms equal to a median relative difference of 0 (DeepFool; largest 6.8e-5 in L2,
2.1e-6 in L∞) and 8e-8 (C&W; largest 1.2%). The tolerances below are a decade or more above those.
"""

import numpy as np
import pytest
import torch
from torch import nn

from labelflip_models.analysis.agreement import paired_agreement
from labelflip_models.attacks import Bounds, make_attack, minimal_kernels, run_attack
from labelflip_models.attacks.engine import fast_copy
from labelflip_models.attacks.minimal_kernels import deepfool
from labelflip_models.errors import ConfigError

NAMES = ("l2-deepfool", "linf-deepfool", "l2-cw")
# Few steps keep the fast tests to seconds; C&W finds an adversarial for every image of the linear model with these.
QUICK = {"l2-deepfool": {"steps": 10}, "linf-deepfool": {"steps": 10},
         "l2-cw": {"binary_search_steps": 2, "steps": 50, "stepsize": 0.05, "initial_const": 10.0}}
DEEPFOOL = {"steps": 50, "candidates": 10, "overshoot": 0.02, "loss": "logits"}
CW = {**QUICK["l2-cw"], "confidence": 0.0, "abort_early": True}


class ConstantModel(nn.Module):
    """Class 0 whatever the input; the zero-weighted input term gives attacks a (zero) gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.arange(10, 0, -1, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.fixture(scope="module")
def linear():
    """A random linear classifier and 16 images it classifies as their labels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _linear_distance(model, x, y, dual_ord):
    """Each image's distance to the nearest linear boundary (ignoring the pixel bounds), in the norm whose dual
    is `dual_ord`: min over k of (l_y − l_k) / ‖w_y − w_k‖_dual."""
    weight, bias = model[1].weight.detach().double(), model[1].bias.detach().double()
    logits = x.flatten(1).double() @ weight.T + bias
    out = []
    for logit, label in zip(logits, y):
        others = [k for k in range(10) if k != label]
        gaps = logit[label] - logit[others]
        out.append((gaps / torch.linalg.vector_norm(weight[label] - weight[others], ord=dual_ord, dim=1)).min())
    return torch.stack(out)


def disagreements(ours, ref, norm_rtol: float) -> list[str]:
    """What differs between two runs of one attack on the same images, beyond `norm_rtol` in each image's norm."""
    problems = []
    if not torch.equal(ours.success, ref.success):
        problems.append(f"success differs on {(ours.success != ref.success).sum().item()} images")
    both = ours.success & ref.success
    relative = (ours.norms[both] - ref.norms[both]).abs() / ref.norms[both]
    if len(relative) and relative.max() > norm_rtol:
        problems.append(f"norms differ by up to {relative.max().item():.2e} (relative)")
    if not torch.equal(ours.adv_pred[both], ref.adv_pred[both]):
        problems.append("adversarials land in other classes")
    return problems


@pytest.mark.parametrize("name, extra", [(name, {}) for name in NAMES] + [
    ("l2-deepfool", {"loss": "crossentropy"}), ("linf-deepfool", {"candidates": 3}), ("l2-cw", {"confidence": 2.0})])
def test_auto_runs_the_native_kernel_and_it_matches_foolbox(linear, name, extra):
    model, x, y = linear
    attack = make_attack(name, **QUICK[name], **extra)
    ours = run_attack(model, x, y, attack)
    ref = run_attack(model, x, y, attack, engine="foolbox")
    assert ours.params["engine"] == "labelflip native (fp32)" and ref.params["engine"].startswith("foolbox")
    assert ours.success.all()  # every image of the linear model has an adversarial within these steps
    assert disagreements(ours, ref, norm_rtol=1e-4) == []


def test_engine_native_is_refused_only_where_there_is_no_kernel(linear):
    model, x, y = linear
    run_attack(model, x[:2], y[:2], make_attack("l2-deepfool", steps=2), engine="native")
    with pytest.raises(ConfigError, match="no kernel"):
        run_attack(model, x[:2], y[:2], make_attack("l1-bb", steps=2), engine="native")


@pytest.mark.parametrize("name", NAMES)
def test_the_check_catches_a_broken_kernel(linear, monkeypatch, name):
    # The comparison above must be able to fail. DeepFool that only ever considers the runner-up class (not the
    # nearest of the top 10) goes to a farther boundary; C&W that forgets the model's gradient of images whose
    # hinge term was inactive at the previous step (the images it evaluates without autograd first) optimises
    # something else.
    model, x, y = linear
    attack = make_attack(name, **QUICK[name])
    ref = run_attack(model, x, y, attack, engine="foolbox")
    if name.endswith("deepfool"):
        real = minimal_kernels._candidate_gradients

        def runner_up_only(graph, classes, loss):
            differences, grads = real(graph, classes, loss)
            return differences[:, :1].expand_as(differences), grads[:, :1].expand_as(grads)

        monkeypatch.setattr(minimal_kernels, "_candidate_gradients", runner_up_only)
    else:
        real = minimal_kernels._cw_model_term

        def forgetful(model, x, y, consts, confidence, hinge_active):
            logits, hinge, grad = real(model, x, y, consts, confidence, hinge_active)
            return logits, hinge, grad * hinge_active.view(-1, 1, 1, 1)

        monkeypatch.setattr(minimal_kernels, "_cw_model_term", forgetful)
    broken = run_attack(model, x, y, attack)
    assert disagreements(broken, ref, norm_rtol=1e-4) != []


@pytest.mark.parametrize("norm, dual_ord", [("l2", 2), ("linf", 1)])
@pytest.mark.parametrize("overshoot", [0.0, 0.02, 0.5])
def test_deepfool_steps_past_the_nearest_linear_boundary_by_the_overshoot(linear, norm, dual_ord, overshoot):
    # On a linear model one step reaches the nearest boundary: the step is (d + 1e-4) in the attack's norm (d the
    # distance, 1e-4 Foolbox's margin for numerical stability), scaled by 1 + overshoot. Wide bounds: no clipping.
    model, x, y = linear
    adv, success = deepfool(fast_copy(model), x, y, norm=norm, **{**DEEPFOOL, "steps": 1, "overshoot": overshoot},
                            bounds=Bounds(-100, 100))
    assert success.all()
    size = torch.linalg.vector_norm((adv - x).flatten(1), ord={"l2": 2, "linf": float("inf")}[norm], dim=1)
    expected = (1 + overshoot) * (_linear_distance(model, x, y, dual_ord) + 1e-4)
    torch.testing.assert_close(size.double(), expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_adversarials_stay_within_other_bounds(linear, name):
    model, x, y = linear
    result = run_attack(model, x * 2 - 1, y, make_attack(name, **QUICK[name]), bounds=Bounds(-1, 1))
    assert result.params["engine"].startswith("labelflip native")
    assert result.raw.min() >= -1 and result.raw.max() <= 1
    assert result.success.any()
    assert torch.equal(result.adv_pred, model(result.clipped).argmax(1))


def test_deepfool_stops_each_image_once_it_is_adversarial(linear, monkeypatch):
    # Images drop out of the batch when adversarial: the batches shrink, and an image that is adversarial from the
    # start is returned as it is without a gradient step.
    model, x, y = linear
    sizes = []
    real = minimal_kernels._candidate_gradients

    def spy(graph, classes, loss):
        sizes.append(len(classes))
        return real(graph, classes, loss)

    monkeypatch.setattr(minimal_kernels, "_candidate_gradients", spy)
    wrong = (y + 1) % 10
    labels = torch.where(torch.arange(16) < 4, wrong, y)  # the first 4 are misclassified already
    adv, success = deepfool(fast_copy(model), x, labels, norm="l2", **DEEPFOOL, bounds=Bounds())
    assert success.all() and torch.equal(adv[:4], x[:4])
    assert sizes[0] == 12 and sizes == sorted(sizes, reverse=True) and len(sizes) < DEEPFOOL["steps"]


class BlankIsClassNine(ConstantModel):
    """Class 0, except for the all-zero image: class 9. No attack reaches that image from another."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blank = (x.flatten(1) == 0).all(1, keepdim=True)
        return torch.where(blank, self.logits.flip(0), super().forward(x))


@pytest.mark.parametrize("engine", ["native", "reference"])
def test_cw_reports_its_failures_as_failures(engine):
    # Foolbox's C&W returns an all-zero image where it found nothing, which its verdict counts as a success when the
    # model misclassifies a blank image. Both engines return the image itself there, as a failure.
    model = BlankIsClassNine().eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(4, dtype=torch.long)
    assert model(torch.zeros_like(x)).argmax(1).eq(9).all()
    result = run_attack(model, x, y, make_attack("l2-cw", binary_search_steps=2, steps=5), engine=engine)
    assert not result.success.any() and torch.equal(result.raw, x) and result.attacked.all()


@pytest.mark.parametrize("pattern", ["all", "none", "alternate", "few"])
def test_cw_gradient_is_the_same_however_the_batch_is_split(pattern):
    # Images whose hinge was inactive at the last step run forward without autograd (once enough of them are); any
    # whose hinge is active again runs once more with it. Whatever the guess, the gradient must be the full one.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.arange(40) % 10
    consts = torch.linspace(0.5, 2.0, 40)
    guess = {"all": torch.ones(40, dtype=torch.bool), "none": torch.zeros(40, dtype=torch.bool),
             "alternate": torch.arange(40) % 2 == 0, "few": torch.arange(40) >= 3}[pattern]
    logits, hinge, grad = minimal_kernels._cw_model_term(model, x, y, consts, 0.5, guess)
    x_ = x.clone().requires_grad_(True)
    full = model(x_)
    other = full.detach().masked_fill(nn.functional.one_hot(y, 10).bool(), -float("inf")).argmax(1)
    margin = full.gather(1, y[:, None]).squeeze(1) - full.gather(1, other[:, None]).squeeze(1) + 0.5
    (expected,) = torch.autograd.grad((torch.max(margin, torch.zeros_like(margin)) * consts).sum(), x_)
    assert (hinge > 0).any() and (hinge < 0).any()  # both kinds of image, so the guesses are partly wrong
    torch.testing.assert_close(hinge, margin.detach())
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(logits, full.detach())


@pytest.mark.parametrize("name, params", [("l2-deepfool", {}), ("linf-deepfool", {}),
                                          ("l2-cw", {**QUICK["l2-cw"], "abort_early": False})])
def test_an_images_result_does_not_depend_on_its_batch(linear, name, params):
    # C&W with abort_early stops the whole batch together, as Foolbox does; without it every image runs alone.
    model, x, y = linear
    attack = make_attack(name, **params)
    together = run_attack(model, x, y, attack, batch_size=16)
    alone = run_attack(model, x, y, attack, batch_size=1)
    assert torch.equal(together.success, alone.success)
    torch.testing.assert_close(together.clipped, alone.clipped, rtol=0, atol=1e-5)


@pytest.mark.parametrize("engine", ["auto", "native"])
def test_minimal_attacks_run_in_fp32_even_where_bf16_is_fast(linear, monkeypatch, engine):
    # bf16 moves the decision boundary that a minimal attack measures (minimal_kernels' docstring).
    monkeypatch.setattr("labelflip_models.attacks.engine.bf16_is_fast", lambda device: True)
    model, x, y = linear
    minimal = run_attack(model, x[:2], y[:2], make_attack("l2-deepfool", steps=2), engine=engine)
    fixed = run_attack(model, x[:2], y[:2], make_attack("linf-pgd", steps=1), 0.1, engine=engine)
    assert minimal.params["engine"] == "labelflip native (fp32)"
    assert fixed.params["engine"] == "labelflip native (bf16 autocast)"


@pytest.fixture(scope="module")
def fashion():
    from labelflip_models.data import balanced_subset, load_dataset
    from labelflip_models.models.cache import load_or_train

    data = load_dataset("fashion-mnist")
    images, labels = data.tensors("test", balanced_subset(data.test_labels, 10, data.num_classes))
    return load_or_train(data).model, images, labels


# Smaller than the smoke profile's 5 x 100 C&W steps, to keep the test short; same early abort.
REFERENCE_MODEL = {"l2-deepfool": ({}, 1e-4), "linf-deepfool": ({}, 1e-4),
                   "l2-cw": ({"binary_search_steps": 4, "steps": 50}, 1e-3)}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_native_fp32_matches_foolbox_on_the_reference_model(fashion, name):
    model, images, labels = fashion
    params, median_rtol = REFERENCE_MODEL[name]
    attack = make_attack(name, **params)
    ours = run_attack(model, images, labels, attack, engine="native-fp32")
    ref = run_attack(model, images, labels, attack, engine="foolbox")
    attacked = ours.attacked
    same = (ours.success == ref.success)[attacked].float().mean().item()
    assert same >= 0.97, f"success differs on {1 - same:.1%} of the attacked images"
    both = ours.success & ref.success
    relative = ((ours.norms - ref.norms).abs() / ref.norms)[both]
    assert relative.median() < median_rtol, f"median relative norm difference {relative.median():.2e}"
    stats = paired_agreement(labels.numpy(), ours.landed.numpy(), ref.landed.numpy())
    assert stats.mcnemar_p > 0.01 and stats.marginal_p > 0.01, stats
    assert stats.disagree_upper < 0.15, stats
    assert np.isfinite(ours.norms.numpy()).all()
