"""The flip-rate decision over a case's classes (check_flip_rates: exact binomial test per class, Holm across the
gated ones) and the gate's simulated error rates (gate/characteristics.py), including the table in docs/gate.md."""

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, norm

from labelflip_models.analysis.stats import one_sided_wilson, wilson_interval
from labelflip_models.gate.baselines import flip_rate_threshold
from labelflip_models.gate.characteristics import (
    count_false_alarms,
    equal_power_table,
    margin_table,
    min_detectable_increase,
    power,
    table,
)
from labelflip_models.gate.decisions import GATE_CONFIDENCE, check_flip_rates, flip_p_value

REPO = Path(__file__).resolve().parents[1]
ALPHA = 1 - GATE_CONFIDENCE
CONFIDENCES = (0.9, 0.95, 0.975, 0.99, 0.999)
SIZES = (1, 2, 3, 5, 10, 20, 50, 100, 1000)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every count of every size against thresholds on a 0.005 grid (ends included) and as baselines make them."""
    ks, ns = zip(*((k, n) for n in SIZES for k in range(n + 1)))
    k, n = np.array(ks)[:, None], np.array(ns)[:, None]
    grid = np.broadcast_to(np.linspace(0, 1, 201), (len(ks), 201))
    made = flip_rate_threshold(np.minimum(np.arange(0, 101, 5), n), n)
    return k, n, np.concatenate([grid, made], axis=1)


def _score_p(k: np.ndarray, n: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The one-sided Wilson score test's p-value of H0: rate <= t, for 0 < t < 1 and n > 0."""
    return norm.sf((k / n - t) / np.sqrt(t * (1 - t) / n))


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_lower_bound_rule_is_the_score_test(confidence):
    # check_flip_rate's "Wilson lower bound at c exceeds t" is "score-test p < 1 − c": the Wilson interval is the
    # set of rates that test does not reject. Exact ties (t on the bound, to rounding) are left out.
    k, n, t = _grid()
    inside = (t > 0) & (t < 1)
    lower = np.broadcast_to(one_sided_wilson(k, n, confidence, "lower"), t.shape)
    p = _score_p(k, n, np.where(inside, t, 0.5))
    clear = inside & (np.abs(lower - t) > 1e-9)
    assert clear.mean() > 0.95
    np.testing.assert_array_equal((lower > t)[clear], (p < 1 - confidence)[clear])
    # At the ends the bound never exceeds t = 1, and exceeds t = 0 exactly when something flipped.
    assert not np.any(lower > 1) and np.array_equal((lower > 0)[:, 0], k[:, 0] > 0)


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_exact_p_value_is_the_clopper_pearson_bound(confidence):
    # flip_p_value rejects at 1 − c exactly where the one-sided Clopper–Pearson lower bound at c exceeds t.
    k, n, t = _grid()
    lower = np.broadcast_to(np.where(k > 0, beta.ppf(1 - confidence, np.maximum(k, 1), n - k + 1), 0.0), t.shape)
    clear = np.abs(lower - t) > 1e-9
    assert clear.mean() > 0.95
    np.testing.assert_array_equal((lower > t)[clear], (flip_p_value(k, n, t) < 1 - confidence)[clear])


def test_p_value_edges():
    assert flip_p_value(0, 0, 0.3) == 1  # no images: nothing to show
    assert flip_p_value(5, 5, 1.0) == 1 and flip_p_value(5, 5, 1.5) == 1  # a rate cannot exceed 1
    assert flip_p_value(0, 5, 0.0) == 1 and flip_p_value(1, 5, 0.0) == 0  # against 0 any flip is a regression


def _check(names, flips, ns, thresholds, **kw):
    """The unpaired decision without a margin: thresholds are what the rates are tested against."""
    return check_flip_rates(names, flips, ns, thresholds, list(thresholds), margin=0.0, **kw)


def _baseline(k: int, n: int, rates, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    counts = np.random.default_rng(seed).binomial(n, rates, size=k)
    return [f"c{i}" for i in range(k)], counts, flip_rate_threshold(counts, n)


@pytest.mark.parametrize("rates", [0.1, 0.5, np.random.default_rng(1).beta(2, 5, size=1000)],
                         ids=["0.1", "0.5", "spread"])
def test_1000_classes_at_their_baseline_rates_pass(rates):
    names, counts, thresholds = _baseline(1000, 50, rates)
    decisions = _check(names, counts, [50] * 1000, thresholds)
    assert all(d.passed for d in decisions.values())


def test_one_clearly_regressed_class_among_1000_is_caught():
    names, counts, thresholds = _baseline(1000, 50, 0.1)
    flips = counts.copy()
    flips[417] = 40
    decisions = _check(names, flips, [50] * 1000, thresholds)
    assert [n for n, d in decisions.items() if not d.passed] == ["c417"]
    d = decisions["c417"]
    assert d.figures["gated"] == "yes" and d.figures["p_value"] < d.figures["holm_level"] == pytest.approx(ALPHA / 1000)
    assert d.figures["rise"] > 0  # the terminal summary lists the largest rise first
    assert d.message.startswith("class 'c417': 40/50 flipped (rate 0.800, rise ")
    assert "vs Holm level 1.0e-05 (unpaired: baseline rate" in d.message


def test_holm_steps_down():
    # p = 0.0021 and 0.0072 at n = 100 against 0.3: the smaller beats α/2, so the larger is compared with α.
    assert flip_p_value(44, 100, 0.3) < ALPHA / 2 < flip_p_value(42, 100, 0.3) < ALPHA
    both = _check(["a", "b"], [44, 42], [100, 100], [0.3, 0.3])
    assert not both["a"].passed and not both["b"].passed
    assert both["b"].figures["holm_level"] == pytest.approx(ALPHA)
    # Two p-values of 0.0072: each alone would fail, but the smaller one already misses α/2, so Holm stops.
    assert not _check(["a"], [42], [100], [0.3])["a"].passed
    stopped = _check(["a", "b"], [42, 42], [100, 100], [0.3, 0.3])
    assert stopped["a"].passed and stopped["b"].passed
    assert "Holm stopped at a smaller p-value" in stopped["b"].message


def test_classes_too_small_to_be_significant_are_not_gated():
    names, counts, thresholds = _baseline(1000, 50, 0.1)
    ns = np.full(1000, 50)
    flips = counts.copy()
    # 3/3 against 0.5 (p = 0.125), no images at all, and a threshold of 1: none could ever be significant.
    ns[:3], flips[:3], thresholds[:3] = (3, 0, 50), (3, 0, 50), (0.5, 0.2, 1.0)
    flips[3] = 40  # a regression among the gated classes
    decisions = _check(names, flips, ns, thresholds)
    for name in ("c0", "c1", "c2"):
        d = decisions[name]
        assert d.passed and d.figures["gated"] == "no" and d.figures["holm_level"] is None
        assert ", not gated (n too small: " in d.message
    assert "not gated (n too small: p=0.12 at best vs" in decisions["c0"].message
    assert decisions["c1"].message.startswith("class 'c1': 0/0 flipped, not gated (n too small: no images)")
    assert decisions["c1"].figures["rate"] is None
    # Holm's levels count only the 997 gated classes.
    assert not decisions["c3"].passed and decisions["c3"].figures["holm_level"] == pytest.approx(ALPHA / 997)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one count"):
        _check(["a", "b"], [1], [10, 10], [0.5, 0.5])
    with pytest.raises(ValueError, match="0 <= k <= n"):
        _check(["a"], [11], [10], [0.5])
    with pytest.raises(ValueError, match="alpha"):
        _check(["a"], [1], [10], [0.5], alpha=0)
    assert _check([], [], [], []) == {}


# Per K, the table's images per class; at each, the rates it reports (the spread drawn as the table draws it).
@pytest.mark.slow
@pytest.mark.parametrize("k, n", [(10, 100), (100, 100), (1000, 50)])
@pytest.mark.parametrize("rates", ["0.1", "0.5", "spread"])
def test_unchanged_models_fail_a_case_in_under_1_percent_of_runs(k, n, rates):
    reps = 3000
    alarms = count_false_alarms(k, n, np.random.default_rng(0).beta(2, 5, size=k) if rates == "spread"
                                else float(rates), reps, seed=1)
    _, upper = wilson_interval(alarms, reps, 0.95)
    assert upper <= 0.01, f"{alarms}/{reps} false alarms per run (95% upper bound {float(upper):.4f})"


def test_paired_decisions_keep_their_level_at_the_margin_and_gain_power():
    from labelflip_models.gate.characteristics import paired_and_unpaired, smallest_rise_caught

    # A rise of exactly the margin fails class 0 in at most α of runs (Tango's test is approximate: checked here).
    for rate, churn in ((0.1, 0.0), (0.3, 0.3), (0.5, 0.5)):
        paired, unpaired = paired_and_unpaired(10, 100, rate, 0.05, churn, reps=2000, seed=2)
        _, upper = wilson_interval(round(paired * 2000), 2000, 0.95)
        assert upper <= ALPHA * 1.5 and unpaired <= ALPHA, (rate, churn, paired, unpaired)
    paired, unpaired = smallest_rise_caught(10, 100, 0.1, 0.1, reps=200)
    assert paired < unpaired


def test_power_rises_with_the_increase_and_meets_the_detectable_one():
    increase = min_detectable_increase(10, 100, 0.1, power=0.8, reps=200, seed=0)
    assert 0.1 < increase < 0.5
    assert power(10, 100, 0.1, increase, reps=200, seed=0) == pytest.approx(0.8, abs=1e-3)
    rising = [power(10, 100, 0.1, d, reps=200, seed=0) for d in (0.0, 0.1, 0.2, 0.3, 0.4)]
    assert rising == sorted(rising) and rising[0] < ALPHA and rising[-1] > 0.99
    # A class that cannot be gated is never caught.
    assert np.isnan(min_detectable_increase(10, 3, 0.5, reps=50, seed=0))


@pytest.mark.slow
def test_docs_table_is_current():
    text = (REPO / "docs" / "gate.md").read_text()
    section = re.search(r"^## The gate's error rates\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "docs/gate.md lacks the section '## The gate's error rates'"
    documented = "".join(line + "\n" for line in section.group(1).splitlines() if line.startswith("|"))
    assert documented == table() + margin_table() + equal_power_table(), (
        "docs/gate.md's tables of error rates are stale; replace them with the output of "
        "python -m labelflip_models.gate.characteristics")


def test_min_norm_checks_hold_the_case_error_across_many_classes():
    """100 classes of an unchanged model: checked each at 99%, some class fails in about 7% of runs; Bonferroni
    across the classes keeps the case's false alarms under 1%, and a class whose norms fall twentyfold is still
    caught (at n = 30 per class, a fourfold fall is not: Bonferroni over 100 classes costs power)."""
    from labelflip_models.gate.baselines import _norm_floors
    from labelflip_models.gate.decisions import check_min_norm, check_min_norms

    rng = np.random.default_rng(0)
    reps, k, n = 100, 100, 30
    per_class = family = 0
    for _ in range(reps):
        floors = _norm_floors({str(c): rng.exponential(1.0, n) for c in range(k)})
        rerun = {str(c): rng.exponential(1.0, n) for c in range(k)}
        per_class += any(not check_min_norm(c, rerun[c], floors[c], margin=0.0).passed for c in rerun)
        family += any(not d.passed for d in check_min_norms(rerun, floors, margin=0.0).values())
    assert per_class >= 4 and family <= 1, (per_class, family)
    rerun["0"] = rng.exponential(0.05, n)
    assert not check_min_norms(rerun, floors)["0"].passed
