"""Attack strength against AutoAttack (gate/strength.py): the exact one-sided McNemar test on paired per-image
outcomes, pairing runs by test index, the gate test's record/warning/report file, and the baseline's provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from labelflip_models.errors import DataError
from labelflip_models.gate.baselines import load_baseline, make_baseline, write_baseline
from labelflip_models.gate.margins import Margins
from labelflip_models.gate.profiles import CASE_KINDS, Case, cases, get_profile, is_autoattack
from labelflip_models.gate.shared_runs import CaseRun, load_run, save_run
from labelflip_models.gate.strength import (
    STRENGTH_ALPHA,
    Comparison,
    WeakAttackWarning,
    autoattack_case,
    check_attack_strength,
    compare_with_autoattack,
    comparison_case,
    mcnemar_p_value,
    paired_flips,
)
from labelflip_models.gate.tests import test_gate as gate_tests
from labelflip_models.reports.load import load_strength
from labelflip_models.runs.results import STRENGTH_FILE, STRENGTH_SCHEMA

from .test_gate_logic import NAMES, fake_outcomes, fake_result

PGD = Case("smoke", "mnist-5k", "linf-pgd", 0.1)
AA = Case("smoke", "mnist-5k", "linf-autoattack", 0.1)
L2PGD = Case("smoke", "mnist-5k", "l2-pgd", 1.0)
PROFILE_CASES = [PGD, AA, L2PGD, Case("smoke", "mnist-5k", "l2-deepfool", None)]


def outcomes(both: int, only_aa: int, only_case: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """(case flipped, AutoAttack flipped) for images in the four paired categories."""
    case = [True] * both + [False] * only_aa + [True] * only_case + [False] * neither
    aa = [True] * both + [True] * only_aa + [False] * only_case + [False] * neither
    return np.array(case), np.array(aa)


def exact_p(b: int, c: int) -> float:
    """P(Binomial(b + c, 1/2) >= b), written out from the binomial coefficients."""
    n = b + c
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2 ** n if n else 1.0


# --- the statistic ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b, c", [(0, 0), (1, 0), (3, 1), (2, 5), (6, 0), (7, 0), (7, 1), (10, 3), (0, 9)])
def test_mcnemar_p_value_is_exact_on_small_counts(b, c):
    assert mcnemar_p_value(b, c) == pytest.approx(exact_p(b, c), rel=1e-12)


def test_seven_misses_and_none_the_other_way_are_the_fewest_flagged_at_one_percent():
    # 2^-7 = 0.0078 < 0.01 <= 2^-6 = 0.0156: with no flips the other way, 7 missed flips are significant, 6 are not.
    weak = check_attack_strength(*outcomes(10, 7, 0, 3))
    assert weak.figures["p_value"] == pytest.approx(1 / 128) and weak.figures["weak"] and not weak.passed
    fine = check_attack_strength(*outcomes(10, 6, 0, 4))
    assert fine.figures["p_value"] == pytest.approx(1 / 64) and not fine.figures["weak"] and fine.passed
    assert STRENGTH_ALPHA == 0.01


def test_a_weak_attack_is_flagged_and_says_how_many_flips_it_misses():
    # AutoAttack flips 30 of 40 images; the attack finds 20 of those and nothing else: 10 missed, p = 2^-10.
    case, aa = outcomes(20, 10, 0, 10)
    decision = check_attack_strength(case, aa, attack="fgsm")
    assert not decision.passed
    assert decision.figures == {"n": 40, "case_flips": 20, "autoattack_flips": 30, "missed": 10, "only_case": 0,
                                "p_value": pytest.approx(2 ** -10), "equivalence_p": pytest.approx(1.0),
                                "alpha": 0.01, "margin": 0.05, "verdict": "weaker", "weak": True}
    assert "fgsm misses 10 of AutoAttack's flips" in decision.message
    assert "weaker than AutoAttack (p=0.00098 < 0.01)" in decision.message


def test_a_small_comparison_says_not_shown_with_its_n_and_p():
    """The smoke profile's sample size: 10 paired images, 3 flips missed, none found the other way (p = 1/8) is
    neither weak nor shown as strong; the message says why, never a bare "no"."""
    decision = check_attack_strength(*outcomes(5, 3, 0, 2))
    assert decision.passed and decision.figures["verdict"] == "not shown"
    assert "not shown: n=10 is too small (McNemar p=0.12" in decision.message


def test_as_strong_needs_enough_images_that_agree():
    # Identical outcomes on 400 images: AutoAttack cannot flip 5% more; on 40 the same agreement shows nothing.
    assert check_attack_strength(*outcomes(200, 0, 0, 200)).figures["verdict"] == "as strong"
    assert check_attack_strength(*outcomes(20, 0, 0, 20)).figures["verdict"] == "not shown"
    # 400 images with 4 missed and 4 found the other way: still as strong; with 40 missed (10%): weaker.
    assert check_attack_strength(*outcomes(196, 4, 4, 196)).figures["verdict"] == "as strong"
    assert check_attack_strength(*outcomes(160, 40, 0, 200)).figures["verdict"] == "weaker"


@pytest.mark.parametrize("n", [100, 400, 1000])
def test_as_strong_is_rarely_said_of_an_attack_missing_the_margin(n):
    """Seeded simulation at the boundary of "as strong": AutoAttack flips exactly `margin` (0.05) of the images
    more (discordant 8% one way, 3% the other). The paired score test says "as strong" in at most ~1% of runs."""
    rng = np.random.default_rng(n)
    said = 0
    for _ in range(2000):
        category = rng.choice(4, size=n, p=(0.5, 0.08, 0.03, 0.39))  # both, only AutoAttack, only the case, neither
        said += check_attack_strength(np.isin(category, (0, 2)), np.isin(category, (0, 1))).figures["verdict"] \
            == "as strong"
    assert said / 2000 <= 0.015


@pytest.mark.parametrize("both, only_aa, only_case, neither", [(20, 0, 0, 20), (15, 3, 2, 20), (0, 0, 0, 5),
                                                               (10, 2, 6, 0)])
def test_an_equal_or_stronger_attack_is_not_flagged(both, only_aa, only_case, neither):
    decision = check_attack_strength(*outcomes(both, only_aa, only_case, neither))
    assert decision.passed and not decision.figures["weak"] and decision.figures["p_value"] > 0.1


def test_no_paired_images_compares_nothing_and_passes():
    decision = check_attack_strength(np.zeros(0, bool), np.zeros(0, bool))
    assert decision.passed and decision.figures["n"] == 0 and decision.figures["p_value"] == 1.0
    assert "nothing to compare" in decision.message


def test_outcomes_must_pair_up():
    with pytest.raises(ValueError, match="one outcome per paired image"):
        check_attack_strength(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="alpha"):
        check_attack_strength(np.ones(3, bool), np.ones(3, bool), alpha=1.0)


def _null_size(n: int, discordant: float, alpha: float) -> float:
    """The test's exact false-alarm rate when each of n images is discordant with probability `discordant`, each
    discordant image equally likely either way (the null: both attacks equally strong): over the number d of
    discordant images, the probability of the b (missed flips) whose p-value falls below alpha."""
    from scipy.stats import binom

    size = 0.0
    for d in range(n + 1):
        b = np.arange(d + 1)
        rejected = binom.sf(b - 1, d, 0.5) < alpha
        size += binom.pmf(d, n, discordant) * binom.pmf(b[rejected], d, 0.5).sum()
    return float(size)


@pytest.mark.parametrize("n, probabilities", [
    (10, (0.5, 0.15, 0.15, 0.2)),  # the smoke profile's AutoAttack sample: one image per class of 10
    (30, (0.5, 0.2, 0.2, 0.1)),
    (100, (0.4, 0.1, 0.1, 0.4)),
    (500, (0.6, 0.05, 0.05, 0.3)),
])
def test_false_alarms_under_the_null_stay_below_one_percent(n, probabilities):
    """Seeded simulation of equally strong attacks (the discordant categories equally likely): the share of runs
    flagged weak stays at most 1%; so does the exact rate, summed over the binomial."""
    rng = np.random.default_rng(n)
    repetitions = 2000
    flagged = 0
    for _ in range(repetitions):
        category = rng.choice(4, size=n, p=probabilities)  # both, only AutoAttack, only the case, neither
        case, aa = np.isin(category, (0, 2)), np.isin(category, (0, 1))
        flagged += check_attack_strength(case, aa).figures["weak"]
    assert flagged / repetitions <= 0.01
    assert _null_size(n, probabilities[1] + probabilities[2], STRENGTH_ALPHA) <= STRENGTH_ALPHA


def test_an_attack_missing_a_quarter_of_autoattacks_flips_is_caught_at_n_100():
    rng = np.random.default_rng(1)
    caught = 0
    for _ in range(200):
        aa = rng.random(100) < 0.6
        case = aa & (rng.random(100) >= 0.25)
        caught += check_attack_strength(case, aa).figures["weak"]
    assert caught / 200 >= 0.95


# --- pairing runs by test index -----------------------------------------------------------------------------

def make_run(case: Case, indices, labels, clean_pred, adv_pred) -> CaseRun:
    labels, clean, adv = (torch.tensor(v, dtype=torch.int64) for v in (labels, clean_pred, adv_pred))
    n = len(labels)
    return CaseRun(case, {"class_names": NAMES}, None, None, labels, adv, adv != labels, clean == labels,
                   torch.zeros(n), torch.tensor([0.0, 1.0]), clean, torch.tensor(indices, dtype=torch.int64))


def test_runs_pair_by_test_index_over_images_both_classify_correctly():
    # The case attacked test images 0-5; AutoAttack a subset, in another order, plus image 9 the case did not.
    run = make_run(PGD, [0, 1, 2, 3, 4, 5], labels=[0, 1, 2, 3, 4, 5], clean_pred=[0, 1, 2, 3, 9, 5],
                   adv_pred=[0, 7, 2, 8, 4, 5])
    ref = make_run(AA, [5, 3, 1, 4, 9], labels=[5, 3, 1, 4, 9], clean_pred=[5, 3, 1, 4, 9],
                   adv_pred=[6, 8, 7, 0, 1])
    case, aa = paired_flips(run, ref)
    # Shared: 1, 3, 4, 5; image 4 is misclassified before the attack: no flip of either, left out.
    assert case.tolist() == [True, True, False] and aa.tolist() == [True, True, True]


def test_runs_of_different_test_sets_are_refused():
    run = make_run(PGD, [0, 1], labels=[0, 1], clean_pred=[0, 1], adv_pred=[0, 1])
    ref = make_run(AA, [0, 1], labels=[0, 2], clean_pred=[0, 2], adv_pred=[0, 2])
    with pytest.raises(DataError, match="disagree on the labels of 1 shared test images"):
        paired_flips(run, ref)


def test_case_runs_keep_their_test_indices_and_clean_predictions(tmp_path):
    run = make_run(PGD, [7, 3, 11], labels=[1, 2, 3], clean_pred=[1, 0, 3], adv_pred=[4, 0, 3])
    save_run(run, tmp_path)
    loaded = load_run(PGD, tmp_path)
    assert loaded.indices.tolist() == [7, 3, 11] and loaded.clean_pred.tolist() == [1, 0, 3]


# --- which case is compared with which ----------------------------------------------------------------------

def test_each_fixed_case_is_compared_with_autoattack_of_its_norm_at_its_epsilon():
    assert autoattack_case(PGD) == AA
    assert autoattack_case(Case("cifar", "cifar-10", "fgsm", 0.02, "preact-resnet18")) == Case(
        "cifar", "cifar-10", "linf-autoattack", 0.02, "preact-resnet18")
    assert comparison_case(PGD, PROFILE_CASES) == (AA, "")
    against, reason = comparison_case(L2PGD, PROFILE_CASES)
    assert against is None and "no l2-autoattack case at ε=1" in reason and "mnist-5k-l2-autoattack-eps1" in reason
    assert comparison_case(AA, PROFILE_CASES)[0] is None
    assert comparison_case(Case("smoke", "mnist-5k", "l2-deepfool", None), PROFILE_CASES)[0] is None


@pytest.mark.parametrize("attack, family", [("linf-autoattack", True), ("l2-autoattack", True),
                                            ("linf-apgd-ce", True), ("l2-square", True), ("linf-apgd-t", True),
                                            ("fgsm", False), ("linf-pgd", False), ("l2-deepfool", False)])
def test_autoattack_family_is_recognised(attack, family):
    assert is_autoattack(attack) == family


def test_the_compared_cases_are_the_fixed_ones_outside_the_autoattack_family():
    smoke = cases(get_profile("smoke"))
    compared = [c for c in smoke if CASE_KINDS["compared"](c)]
    assert compared and all(not c.minimal and "autoattack" not in c.attack for c in compared)
    assert {c.attack for c in smoke if CASE_KINDS["fixed"](c)} - {c.attack for c in compared} == {
        "linf-autoattack", "l2-autoattack"}


# --- the gate test --------------------------------------------------------------------------------------------

def _runs(weak: bool) -> dict[Case, CaseRun]:
    n = 40
    labels = [i % 10 for i in range(n)]
    aa_adv = [(label + 1) % 10 if i < 30 else label for i, label in enumerate(labels)]
    case_adv = [(label + 1) % 10 if i < (20 if weak else 30) else label for i, label in enumerate(labels)]
    return {PGD: make_run(PGD, list(range(n)), labels, labels, case_adv),
            AA: make_run(AA, list(range(n)), labels, labels, aa_adv)}


def _call(case: Case, runs: dict[Case, CaseRun], report: Path | None):
    recorded = []
    config = SimpleNamespace(report=report, profile_cases=lambda: PROFILE_CASES, margins=Margins())
    gate_tests.test_attack_strength(case, config, runs.__getitem__,
                                    lambda check, decision, **figures: recorded.append((check, decision, figures)))
    return recorded


def test_gate_test_records_a_weak_attack_and_warns_without_failing(tmp_path):
    with pytest.warns(WeakAttackWarning) as caught:
        recorded = _call(PGD, _runs(weak=True), tmp_path)
    [(check, decision, figures)] = recorded
    assert check == "attack_strength" and not decision.passed and decision.figures["missed"] == 10
    assert figures == {"case": PGD.id, "autoattack_case": AA.id}
    message = str(caught[0].message)
    assert PGD.id in message and "misses 10 of the 30 flips" in message and "p=0.00098" in message
    record = json.loads((tmp_path / "gate-runs" / PGD.id / STRENGTH_FILE).read_text())
    assert record["schema"] == STRENGTH_SCHEMA and record["subject"] == "mnist-5k" and record["weak"] is True
    assert record["autoattack_case"] == AA.id and record["missed"] == 10


def test_gate_test_passes_quietly_on_an_equal_attack(recwarn):
    recorded = _call(PGD, _runs(weak=False), None)
    assert recorded[0][1].passed and not [w for w in recwarn if issubclass(w.category, WeakAttackWarning)]


def test_gate_test_skips_cases_without_a_comparison(tmp_path):
    with pytest.raises(pytest.skip.Exception, match="no l2-autoattack case at ε=1 .mnist-5k-l2-autoattack-eps1"):
        _call(L2PGD, _runs(weak=True), tmp_path)
    # The report still lists it, as not compared.
    [record] = load_strength([tmp_path / "gate-runs"])
    assert record["case"] == L2PGD.id and record["compared"] is False and "l2-autoattack" in record["reason"]


def test_the_gate_test_is_collected_wherever_the_others_are():
    assert "test_attack_strength" in gate_tests.__all__
    marks = {m.name: m.args for m in gate_tests.test_attack_strength.pytestmark}
    # Not over the AutoAttack cases themselves, the reference the others are compared with.
    assert marks["labelflip_cases"] == ("compared",) and "labelflip" in marks


# --- baselines ----------------------------------------------------------------------------------------------

CASE = Case("quick", "mnist-5k", "linf-pgd", 0.1)


def test_a_baseline_made_with_a_weak_attack_says_so(tmp_path):
    comparison = Comparison(CASE, AA, check_attack_strength(*outcomes(20, 10, 0, 10), attack="linf-pgd"))
    path = write_baseline(CASE, tmp_path, fake_result(), attack_strength=comparison.entry())
    strength = json.loads(path.read_text())["attack_strength"]
    assert strength["compared"] is True and strength["weak"] is True and strength["missed"] == 10
    assert strength["autoattack_case"] == AA.id and strength["p_value"] == pytest.approx(2 ** -10)
    assert load_baseline(CASE, tmp_path, NAMES, 1000)["attack_strength"] == strength


def test_a_baseline_not_compared_says_why_and_minimal_ones_have_no_entry():
    reason = {"compared": False, "reason": "profile 'quick' has no linf-autoattack case at ε=0.1"}
    assert make_baseline(CASE, fake_result(), attack_strength=reason)[0]["attack_strength"] == reason
    assert make_baseline(CASE, fake_result())[0]["attack_strength"]["compared"] is False
    minimal = Case("quick", "mnist-5k", "l2-deepfool", None)
    assert "attack_strength" not in make_baseline(minimal, fake_result(), fake_outcomes(norms=np.ones(1000)))[0]


def test_compare_with_autoattack_fetches_the_autoattack_run():
    runs = _runs(weak=True)
    asked = []
    comparison = compare_with_autoattack(runs[PGD], PROFILE_CASES, lambda c: asked.append(c) or runs[c])
    assert asked == [AA] and comparison.weak and comparison.entry()["missed"] == 10
    assert comparison.entry()["margin"] == 0.05  # the gate's default flip-rate margin
    # --labelflip-margin reaches "as strong": the equivalence margin is the gate's tolerance, 0 included.
    for margin in (0.0, 0.2):
        assert compare_with_autoattack(runs[PGD], PROFILE_CASES, runs.__getitem__, margin).entry()["margin"] == margin
    not_compared = compare_with_autoattack(make_run(L2PGD, [0], [0], [0], [0]), PROFILE_CASES, runs.__getitem__)
    assert not_compared.entry() == {"compared": False, "reason": not_compared.reason} and not not_compared.weak
