"""The evaluation checks of gate/evaluation_checks.py: the statistics on constructed runs, the case groupings the
gate parameterises, and real runs: the reference model passes; a PGD with 1 step, a PGD of a few short steps and a
model with its input rounded are flagged."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from labelflip_models.gate.evaluation_checks import (
    RERUN_PER_CLASS,
    SINGLE_STEP_ONLY,
    check_converged,
    check_covers_single_step,
    check_monotone_in_epsilon,
    check_white_box_beats_black_box,
    most_informative,
    rerun_positions,
)
from labelflip_models.gate.profiles import (
    Case,
    cases,
    epsilon_series,
    get_profile,
    iterative_series,
    series_id,
    single_step_pairs,
    step_pair_id,
)
from labelflip_models.gate.shared_runs import CaseRun

NAMES = ["a", "b"]


def run(attack: str, eps: float, labels, adv_pred, clean_pred=None, indices=None) -> CaseRun:
    labels, adv = torch.tensor(labels), torch.tensor(adv_pred)
    clean = labels.clone() if clean_pred is None else torch.tensor(clean_pred)
    n = len(labels)
    idx = torch.arange(n) if indices is None else torch.tensor(indices)
    return CaseRun(Case("smoke", "mnist-5k", attack, eps), {"class_names": NAMES}, None, None, labels, adv,
                   adv != labels, clean == labels, torch.zeros(n), torch.tensor([0.0, 1.0]), clean, idx)


def outcomes(robust: int, broken: int, label: int = 0) -> tuple[list[int], list[int]]:
    """Labels and adversarial predictions of `robust` images kept in class `label` and `broken` moved out of it."""
    return [label] * (robust + broken), [label] * robust + [1 - label] * broken


def test_robust_accuracy_falling_with_epsilon_passes():
    labels, small = outcomes(80, 20)
    _, large = outcomes(30, 70)
    decision = check_monotone_in_epsilon([run("linf-pgd", 0.2, labels, large), run("linf-pgd", 0.1, labels, small)],
                                         NAMES)
    assert decision.passed and decision.figures["largest_rise"] == 0


def test_a_class_more_robust_at_the_larger_epsilon_fails_and_is_named():
    # Class "b": 20 images broken at ε = 0.1 are robust at 0.2, none the other way (p = 2^-20).
    labels, small = outcomes(30, 20, label=1)
    large = [1] * 50
    decision = check_monotone_in_epsilon([run("linf-pgd", 0.1, labels, small), run("linf-pgd", 0.2, labels, large)],
                                         NAMES)
    assert not decision.passed
    assert "'b' 20 images robust at ε=0.2 but not at 0.1, 0 the reverse" in decision.message


def test_a_few_images_crossing_back_by_chance_pass():
    # A random start moves a few images either way: 3 up and 2 down is no evidence (p = 0.5).
    labels = [0] * 100
    small = [0] * 50 + [1] * 50
    large = [1] * 3 + [0] * 47 + [1] * 48 + [0] * 2
    assert check_monotone_in_epsilon([run("linf-pgd", 0.1, labels, small), run("linf-pgd", 0.2, labels, large)],
                                     NAMES).passed


def test_runs_pair_by_test_index():
    # The larger ε attacked the same images in another order: no rise once paired by index.
    labels, small = outcomes(50, 50)
    large_run = run("linf-pgd", 0.2, labels[::-1], small[::-1], indices=list(range(99, -1, -1)))
    assert check_monotone_in_epsilon([run("linf-pgd", 0.1, labels, small), large_run], NAMES).passed


def test_pgd_missing_fgsm_flips_fails_beyond_the_measured_share():
    labels, fgsm = outcomes(40, 60)
    assert check_covers_single_step(run("fgsm", 0.1, labels, fgsm), run("linf-pgd", 0.1, labels, [1] * 100)).passed
    pgd = [1] * 40 + [0] * 30 + [1] * 30  # robust on 30 of the 60 FGSM broke
    decision = check_covers_single_step(run("fgsm", 0.1, labels, fgsm), run("linf-pgd", 0.1, labels, pgd))
    assert not decision.passed and decision.figures["single_step_only"] == 30
    assert "30 of 100 paired images broken by fgsm but not by linf-pgd" in decision.message
    # One miss in 100 is within the share.
    pgd = [0] * 41 + [1] * 59
    assert check_covers_single_step(run("fgsm", 0.1, labels, fgsm), run("linf-pgd", 0.1, labels, pgd)).passed
    assert SINGLE_STEP_ONLY == 0.02


def test_misclassified_images_are_not_counted():
    labels = [0] * 10
    clean = [1] * 10  # every image misclassified: nothing to compare
    decision = check_covers_single_step(run("fgsm", 0.1, labels, [1] * 10, clean),
                                        run("linf-pgd", 0.1, labels, [0] * 10, clean))
    assert decision.passed and decision.figures["n"] == 0


def test_groupings_of_the_profiles():
    smoke = cases(get_profile("smoke"))
    series = {(s[0].model_key, s[0].attack): [c.epsilon for c in s] for s in epsilon_series(smoke)}
    # FGSM is single-step (left out), L2 PGD has one ε; L∞ PGD and L∞ AutoAttack remain, per model.
    assert series == {(m, a): e for m in ("fashion-mnist", "mnist-5k") for a, e in
                      (("linf-pgd", [0.02, 0.05, 0.1, 0.2]), ("linf-autoattack", [0.1, 0.2]))}
    pairs = single_step_pairs(smoke)
    assert len(pairs) == 8 and all(s.attack == "fgsm" and i.attack == "linf-pgd" and s.epsilon == i.epsilon
                                   for s, i in pairs)
    assert epsilon_series(cases(get_profile("quick"))) == []
    assert [[c.id for c in s] for s in iterative_series(cases(get_profile("quick")))] == [["mnist-5k-linf-pgd-eps0.1"]]
    assert [len(s) for s in iterative_series(smoke)] == [4, 4]
    assert (series_id(pairs[0][1]), step_pair_id(pairs[0][1])) == ("fashion-mnist-linf-pgd", "fashion-mnist-eps0.02")


def test_the_rerun_checks_take_the_run_nearest_half_robust_and_correct_images_per_class():
    labels = [0] * 30 + [1] * 30
    runs = [run("linf-pgd", eps, labels, [0] * k + [1] * (30 - k) + [1] * k + [0] * (30 - k))
            for eps, k in ((0.1, 25), (0.2, 14), (0.3, 16), (0.4, 2))]
    assert most_informative(runs).case.epsilon == 0.2  # 14/30 and 16/30 tie; the smaller ε wins
    clean = [1] * 5 + [0] * 25 + [1] * 30  # the first 5 images of class a misclassified
    positions = rerun_positions(run("linf-pgd", 0.1, labels, labels, clean), 2)
    assert positions.tolist() == list(range(5, 5 + RERUN_PER_CLASS)) + list(range(30, 30 + RERUN_PER_CLASS))
    assert [(s.id, i.id) for s, i in single_step_pairs(cases(get_profile("quick")))] == [
        ("mnist-5k-fgsm-eps0.1", "mnist-5k-linf-pgd-eps0.1")]


@pytest.mark.slow
def test_a_pgd_of_one_step_is_flagged_and_the_reference_passes():
    """Real runs on the MNIST-5k reference (the quick profile's images, 100 per class): its FGSM and 40-step PGD at
    ε = 0.1 pass; the same PGD with 1 step misses most of FGSM's flips."""
    from labelflip_models.attacks import Bounds
    from labelflip_models.attacks.memo import Memo
    from labelflip_models.data import load_dataset
    from labelflip_models.gate.cases import compute_case
    from labelflip_models.gate.profiles import PROFILES, AttackSpec, Profile
    from labelflip_models.models.cache import load_or_train
    from labelflip_models.runs.results import model_block

    data = load_dataset("mnist-5k")
    model = load_or_train(data).model.eval()
    info, memo = model_block(model), Memo()
    PROFILES["one-step"] = Profile("one-step", ("mnist-5k",), (
        AttackSpec("fgsm", (0.1,)), AttackSpec("linf-pgd", (0.1,), (("steps", 1),))), per_class=100, noise_samples=0)
    try:
        fgsm, pgd, one = (compute_case(Case(p, "mnist-5k", a, 0.1), data, model, info, 0, Bounds(), memo=memo)
                          for p, a in (("quick", "fgsm"), ("quick", "linf-pgd"), ("one-step", "linf-pgd")))
    finally:
        del PROFILES["one-step"]
    assert check_covers_single_step(fgsm, pgd).passed
    decision = check_covers_single_step(fgsm, one)
    assert not decision.passed, decision.message
    assert decision.figures["single_step_only"] > 0.05 * decision.figures["n"]


@pytest.mark.slow
def test_the_large_epsilon_probe_flags_masked_gradients_and_passes_the_reference():
    """On the MNIST-5k reference L∞ PGD at ε = 0.5 breaks every probed image; with its input rounded to 8 bits (no
    gradient) or its logits times 1000 (saturated loss) it breaks almost none, and the probe fails."""
    from labelflip_models.attacks import Bounds
    from labelflip_models.data import load_dataset
    from labelflip_models.gate.evaluation_checks import PROBE_PER_CLASS, large_epsilon_probe
    from labelflip_models.models.cache import load_or_train

    data = load_dataset("mnist-5k")
    model = load_or_train(data).model.eval()
    decision = large_epsilon_probe(model, data, Bounds())
    assert decision.passed and decision.figures["robust"] <= 1 and decision.figures["n"] == 10 * PROBE_PER_CLASS

    class Masked(torch.nn.Module):
        def __init__(self, forward) -> None:
            super().__init__()
            self.model, self.masked = model, forward

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.masked(self.model, x)

    for masked in (lambda m, x: m(torch.round(x * 255) / 255), lambda m, x: m(x) * 1000):
        decision = large_epsilon_probe(Masked(masked).eval(), data, Bounds())
        assert not decision.passed and decision.figures["robust"] >= 90, decision.message
        assert "hides its gradients" in decision.message


def test_the_rerun_checks_pass_a_run_without_a_correctly_classified_image():
    from types import SimpleNamespace

    wrong = run("linf-pgd", 0.1, [0] * 4 + [1] * 4, [1] * 4 + [0] * 4, [1] * 4 + [0] * 4)
    data = SimpleNamespace(num_classes=2)
    for check in (check_converged, check_white_box_beats_black_box):
        decision = check([wrong], None, data, None)
        assert decision.passed and decision.figures["n"] == 0 and "no correctly classified image" in decision.message


@contextmanager
def pgd_variant(params, dataset="mnist-5k", epsilon=0.1):
    """A profile "variant" whose one case is L∞ PGD with `params` at `epsilon` on 100 images per class, for as long
    as the checks of its runs need it."""
    from labelflip_models.gate.profiles import PROFILES, AttackSpec, Profile

    PROFILES["variant"] = Profile("variant", (dataset,), (AttackSpec("linf-pgd", (epsilon,), params),),
                                  per_class=100, noise_samples=0)
    try:
        yield "variant"
    finally:
        del PROFILES["variant"]


def pgd_runs(model, data, profile="quick", epsilon=0.1):
    """The profile's L∞ PGD run at `epsilon` on `model`, as the gate's checks take it."""
    from labelflip_models.attacks import Bounds
    from labelflip_models.gate.cases import compute_case
    from labelflip_models.runs.results import model_block

    return [compute_case(Case(profile, data.name, "linf-pgd", epsilon), data, model, model_block(model), 0, Bounds())]


@pytest.mark.slow
def test_convergence_flags_a_pgd_of_a_few_short_steps_and_passes_the_profiles():
    """On the Fashion-MNIST reference at ε = 0.02 (about half its images robust), the profiles' PGD (40 steps of
    ε/10) gains nothing from 80; 10 steps of ε/20 gain many images from 20."""
    from labelflip_models.attacks import Bounds
    from labelflip_models.data import load_dataset
    from labelflip_models.gate.profiles import PGD_CONVERGED
    from labelflip_models.models.cache import load_or_train

    data = load_dataset("fashion-mnist")
    model = load_or_train(data).model.eval()
    with pgd_variant(PGD_CONVERGED, "fashion-mnist", 0.02) as profile:
        decision = check_converged(pgd_runs(model, data, profile, 0.02), model, data, Bounds())
    assert decision.passed, decision.message
    with pgd_variant((("steps", 10), ("rel_stepsize", 0.05)), "fashion-mnist", 0.02) as profile:
        decision = check_converged(pgd_runs(model, data, profile, 0.02), model, data, Bounds())
    assert not decision.passed and decision.figures["only_longer"] >= 10, decision.message
    assert "with 20 steps instead of 10" in decision.message and "has not converged" in decision.message


@pytest.mark.slow
def test_square_flags_a_model_that_rounds_its_input_and_passes_the_reference():
    """Rounding the input to 8 bits leaves PGD no gradient; Square, which needs none, still breaks the images
    (Fashion-MNIST at ε = 0.05: on MNIST at ε <= 0.1 the reference is robust to both)."""
    from labelflip_models.attacks import Bounds
    from labelflip_models.data import load_dataset
    from labelflip_models.gate.profiles import PGD_CONVERGED
    from labelflip_models.models.cache import load_or_train

    data = load_dataset("fashion-mnist")
    model = load_or_train(data).model.eval()

    class Rounded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(torch.round(x * 255) / 255)

    rounded = Rounded().eval()
    with pgd_variant(PGD_CONVERGED, "fashion-mnist", 0.05) as profile:
        # Square has no native kernel: under a native engine it runs its reference, as the gate's cases do.
        decision = check_white_box_beats_black_box(pgd_runs(model, data, profile, 0.05), model, data, Bounds(),
                                                   engine="native")
        assert decision.passed, decision.message
        decision = check_white_box_beats_black_box(pgd_runs(rounded, data, profile, 0.05), rounded, data, Bounds())
    assert not decision.passed and decision.figures["only_black_box"] >= 50, decision.message
    assert "hides its gradients" in decision.message


@pytest.mark.slow
def test_labelflip_attack_runs_the_checks_its_run_supports(capsys, tmp_path):
    """`labelflip attack`: linf-pgd at an ε gets the large-ε probe, convergence, Square and FGSM on the same images,
    printed after its figures and recorded in result.json. A PGD of ten steps of ε/20 (half ε in all) fails all three
    of its own checks: more steps, Square and FGSM each break images it misses. Any other attack gets the probe
    alone; --no-evaluation-checks skips them."""
    import json

    from .helpers import run_cli

    common = ["attack", "--dataset", "fashion-mnist", "--epsilon", "0.02", "--limit", "300"]
    rc, out, err = run_cli(capsys, [*common, "--attack", "linf-pgd", "--param", "steps=10", "--param",
                                    "rel_stepsize=0.05", "--out", str(tmp_path / "pgd")])
    assert rc == 0, err
    checks = {c["name"]: c for c in json.loads((tmp_path / "pgd" / "result.json").read_text())["evaluation_checks"]}
    assert list(checks) == ["large_epsilon", "converged", "white_box_beats_black_box", "covers_single_step"]
    assert [n for n, c in checks.items() if not c["passed"]] == list(checks)[1:], checks
    assert checks["converged"]["figures"]["steps"] == 10 and checks["covers_single_step"]["figures"]["n"] > 250
    lines = out.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("evaluation check failed")]
    assert [lines[i].split(": ")[1] for i in failed] == list(checks)[1:], out
    assert "with 20 steps instead of 10" in lines[failed[0]]
    assert failed[0] > next(i for i, line in enumerate(lines) if line.startswith("fashion-mnist linf-pgd"))

    rc, out, err = run_cli(capsys, [*common, "--attack", "fgsm", "--out", str(tmp_path / "fgsm")])
    assert rc == 0 and "evaluation checks: all 1 passed (large_epsilon)" in out, (out, err)
    rc, out, err = run_cli(capsys, [*common, "--attack", "fgsm", "--no-evaluation-checks", "--out",
                                    str(tmp_path / "none")])
    assert rc == 0 and "evaluation check" not in out, (out, err)
    assert json.loads((tmp_path / "none" / "result.json").read_text())["evaluation_checks"] is None
