"""Medians of minimal perturbation norms, their order-statistic intervals, and the per-class/pair summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from labelflip_models.analysis.min_norms import median_ci, minimal_norm_summary
from labelflip_models.errors import ConfigError

INF = math.inf


def test_median_ci_uses_textbook_order_statistics():
    # For n = 25 at 95% the classical distribution-free interval is [x_(8), x_(18)].
    values = np.random.default_rng(0).permutation(np.arange(1.0, 26.0))
    assert median_ci(values) == (13.0, 8.0, 18.0)


def test_median_ci_coverage():
    rng = np.random.default_rng(1)
    true_median = math.log(2)  # of Exponential(1)
    for confidence in (0.9, 0.95):
        hits = 0
        for sample in rng.exponential(1.0, (2000, 25)):
            _, lo, hi = median_ci(sample, confidence)
            hits += lo <= true_median <= hi
        assert hits / 2000 >= confidence - 0.02


def test_median_ci_edge_cases():
    assert median_ci(np.array([])) is None
    assert median_ci(np.array([3.0, 1.0, 2.0])) == (2.0, 1.0, 3.0)  # n < 6: [min, max]
    median, lo, hi = median_ci(np.array([1.0, 2.0, INF, INF, INF, INF, INF]))
    assert (median, lo, hi) == (INF, 1.0, INF)
    with pytest.raises(ConfigError):
        median_ci(np.ones(5), confidence=0)
    with pytest.raises(ValueError):
        median_ci(np.array([1.0, math.nan]))


def summary_inputs():
    #               class 0: four attacked (one fails), one not attacked; class 1: five attacked, one fails
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    landed = np.array([1, 2, 1, 0, 1, 0, 0, 2, 1, 0])
    norms = np.array([0.1, 0.2, 0.3, 9.0, 0.05, 0.4, 0.1, 0.2, 9.0, 0.3])
    success = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 1], dtype=bool)
    attacked = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=bool)
    return labels, landed, norms, success, attacked


def test_minimal_norm_summary_hand_case():
    out = minimal_norm_summary(*summary_inputs(), ["zero", "one", "two"])
    zero, one, two = (out["per_class"][k] for k in ("zero", "one", "two"))
    # zero: [0.1, 0.2, 0.3, inf]; median (0.2 + 0.3) / 2; q25 = numpy's 0.175; q75 interpolates towards inf.
    assert (zero["n"], zero["failed"]) == (4, 1)
    assert zero["median"] == pytest.approx(0.25)
    assert zero["ci"] == [0.1, None]
    assert zero["q25"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 25)) and zero["q75"] is None
    # one: [0.1, 0.2, 0.3, 0.4, inf]; q75 sits exactly on 0.4 (numpy alone would give NaN here).
    assert (one["n"], one["failed"]) == (5, 1)
    assert one["median"] == pytest.approx(0.3)
    assert one["q25"] == pytest.approx(0.2) and one["q75"] == pytest.approx(0.4)
    assert two == {"n": 0, "failed": 0, "median": None, "ci": None, "q25": None, "q75": None}
    assert list(out["per_pair"]) == ["zero -> one", "zero -> two", "one -> zero", "one -> two"]
    pair = out["per_pair"]["zero -> one"]  # the unattacked image (0.05) and the failure stay out
    assert (pair["true"], pair["landed"], pair["n"]) == ("zero", "one", 2)
    assert pair["median"] == pytest.approx(0.2)
    assert pair["q25"] == pytest.approx(0.15) and pair["q75"] == pytest.approx(0.25)
    assert out["per_pair"]["one -> zero"]["n"] == 3
    json.dumps(out, allow_nan=False)


def test_all_failed_class_is_json_safe():
    out = minimal_norm_summary(np.zeros(3, int), np.zeros(3, int), np.ones(3), np.zeros(3, bool),
                               np.ones(3, bool), ["a", "b"])
    assert out["per_class"]["a"] == {"n": 3, "failed": 3, "median": None, "ci": [None, None],
                                     "q25": None, "q75": None}
    assert out["per_pair"] == {}
    json.dumps(out, allow_nan=False)


def test_summary_rejects_mismatched_inputs():
    labels, landed, norms, success, attacked = summary_inputs()
    with pytest.raises(ValueError, match="same shape"):
        minimal_norm_summary(labels, landed[:-1], norms, success, attacked, ["a", "b", "c"])
    with pytest.raises(ValueError, match="0..1"):
        minimal_norm_summary(labels, landed, norms, success, attacked, ["a", "b"])
