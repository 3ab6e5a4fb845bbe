"""Symmetry score of flip matrices, its bootstrap interval and its permutation test."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from labelflip_models.analysis.symmetry import symmetry_analysis, symmetry_score
from labelflip_models.errors import ConfigError, DataError

HAND = np.array([[5, 3, 1],
                 [1, 5, 0],
                 [0, 2, 5]])


def reference_score(m: np.ndarray, norm: str) -> float:
    """Direct transcription of the definition, using numpy's own matrix norms."""
    a = m * (1 - np.eye(len(m)))
    sym, anti = (a + a.T) / 2, (a - a.T) / 2
    size = (lambda x: np.abs(x).sum()) if norm == "entrywise" else (lambda x: np.linalg.norm(x, 1))
    return (size(sym) - size(anti)) / (size(sym) + size(anti))


@pytest.mark.parametrize("norm", ["entrywise", "induced"])
def test_perfectly_symmetric_matrix_scores_one(norm):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 50, (10, 10))
    assert symmetry_score(a + a.T, norm) == pytest.approx(1.0)


def test_one_way_matrix_scores_zero_entrywise():
    rng = np.random.default_rng(2)
    upper = np.triu(rng.integers(1, 30, (10, 10)), 1) + np.diag(rng.integers(100, 200, 10))
    assert symmetry_score(upper, "entrywise") == pytest.approx(0.0, abs=1e-12)
    assert symmetry_score(upper.T, "entrywise") == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_case():
    # A_sym off-diagonal: 2, .5, 1 (each twice) -> 7 entrywise, column sums 2.5, 3, 1.5 -> 3 induced;
    # A_anti: ±1, ±.5, ±1 -> 5 entrywise, column sums 1.5, 2, 1.5 -> 2 induced.
    assert symmetry_score(HAND, "entrywise") == pytest.approx((7 - 5) / 12)
    assert symmetry_score(HAND, "induced") == pytest.approx((3 - 2) / 5)


@pytest.mark.parametrize("norm", ["entrywise", "induced"])
def test_matches_reference_and_ignores_diagonal(norm):
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.integers(0, 20, (6, 6))
        expected = reference_score(m, norm)
        assert symmetry_score(m, norm) == pytest.approx(expected)
        m[np.diag_indices(6)] = rng.integers(0, 1000, 6)
        assert symmetry_score(m, norm) == pytest.approx(expected)
        assert -1 <= expected <= 1


def test_undefined_without_flips_and_bad_input():
    assert symmetry_score(np.diag([4, 5, 6]), "entrywise") is None
    with pytest.raises(ConfigError, match="unknown norm"):
        symmetry_score(HAND, "frobenius")
    with pytest.raises(DataError):
        symmetry_score(np.array([[1, -1], [0, 2]]), "entrywise")
    with pytest.raises(DataError):
        symmetry_score(np.ones((2, 3)), "entrywise")


def test_analysis_schema_and_json_safety():
    out = symmetry_analysis(HAND, resamples=500, seed=4)
    assert out["flips"] == 7
    assert set(out["norms"]) == {"entrywise", "induced"}
    assert out["confidence"] == 0.95
    assert out["bootstrap"]["resamples"] == out["permutation"]["resamples"] == 500
    assert out["bootstrap"]["seed"] == out["permutation"]["seed"] == 4
    for norm in ("entrywise", "induced"):
        r = out[norm]
        assert r["score"] == pytest.approx(symmetry_score(HAND, norm))
        assert 0 <= r["ci"][0] <= r["ci"][1] <= 1 and r["se"] > 0 and 0 < r["p_value"] <= 1
    json.dumps(out, allow_nan=False)
    assert symmetry_analysis(HAND, resamples=500, seed=4) == out


def test_no_flips_gives_nones():
    out = symmetry_analysis(np.diag([3, 3, 3]), resamples=50)
    assert out["flips"] == 0
    assert out["entrywise"] == out["induced"] == {"score": None, "ci": None, "se": None, "p_value": None}
    json.dumps(out, allow_nan=False)


def test_bootstrap_matches_example_level_resampling():
    """The multinomial shortcut must agree with literally resampling the N images with replacement."""
    rng = np.random.default_rng(5)
    m = rng.integers(0, 15, (5, 5)) + np.diag(rng.integers(20, 40, 5))
    true, landed = np.nonzero(m)
    true, landed = np.repeat(true, m[true, landed]), np.repeat(landed, m[true, landed])
    scores = []
    for _ in range(1500):
        idx = rng.integers(0, len(true), len(true))
        resampled = np.zeros_like(m)
        np.add.at(resampled, (true[idx], landed[idx]), 1)
        scores.append(symmetry_score(resampled, "entrywise"))
    out = symmetry_analysis(m, resamples=4000, seed=6)["entrywise"]
    assert out["se"] == pytest.approx(np.std(scores, ddof=1), rel=0.12)
    q_lo, q_hi = np.percentile(scores, [2.5, 97.5])
    observed = symmetry_score(m, "entrywise")
    assert out["ci"][0] == pytest.approx(2 * observed - q_hi, abs=0.03)
    assert out["ci"][1] == pytest.approx(2 * observed - q_lo, abs=0.03)


def test_interval_covers_the_population_score():
    """Resampling noise lowers the score, so plain percentile intervals sit below the truth; the reverse-percentile
    interval must cover the score of the generating matrix near its nominal rate (3,000 flips, paper-sized)."""
    rng = np.random.default_rng(1)
    expected = rng.gamma(0.5, 1.0, (10, 10))
    expected = expected + 0.6 * expected.T
    np.fill_diagonal(expected, 0)
    probabilities = np.append(0.3 * expected.ravel() / expected.sum(), 0.7)  # 30% of the images flip
    truth = symmetry_score(np.round(expected * 1e6).astype(int), "entrywise")
    covered = percentile_covered = 0
    for r in range(200):
        counts = rng.multinomial(10000, probabilities)
        m = counts[:100].reshape(10, 10) + np.diag(np.full(10, counts[100] // 10))
        out = symmetry_analysis(m, resamples=500, seed=r)["entrywise"]
        lo, hi = out["ci"]
        covered += lo <= truth <= hi
        percentile_covered += 2 * out["score"] - hi <= truth <= 2 * out["score"] - lo
    assert covered / 200 >= 0.85 and covered > percentile_covered


@pytest.mark.parametrize("norm", ["entrywise", "induced"])
def test_permutation_p_value_matches_exact_null(norm):
    """For K = 3 each row has two off-diagonal cells: the null has 2^3 equally likely arrangements."""
    m = np.array([[0, 9, 2], [8, 0, 1], [3, 1, 0]])
    observed = symmetry_score(m, norm)
    null = []
    for rows in itertools.product(*(itertools.permutations(m[i, np.arange(3) != i]) for i in range(3))):
        perm = np.zeros_like(m)
        for i, row in enumerate(rows):
            perm[i, np.arange(3) != i] = row
        null.append(symmetry_score(perm, norm))
    exact = np.mean(np.array(null) >= observed - 1e-12)
    assert 0 < exact < 1
    assert symmetry_analysis(m, resamples=20000, seed=7)[norm]["p_value"] == pytest.approx(exact, abs=0.015)


def test_permutation_test_separates_symmetric_from_one_way():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 40, (10, 10)) * (rng.random((10, 10)) < 0.3)
    symmetric = a + a.T
    one_way = np.triu(a + a.T, 1)
    assert symmetry_analysis(symmetric, resamples=2000)["entrywise"]["p_value"] < 0.01
    assert symmetry_analysis(one_way, resamples=2000)["entrywise"]["p_value"] > 0.5


def test_seed_changes_draws_and_bad_arguments():
    m = HAND * 3
    assert symmetry_analysis(m, resamples=300, seed=1) != symmetry_analysis(m, resamples=300, seed=2)
    with pytest.raises(ConfigError):
        symmetry_analysis(m, confidence=1.0)
    with pytest.raises(ConfigError):
        symmetry_analysis(m, resamples=0)


@pytest.mark.parametrize("norm", ["entrywise", "induced"])
def test_count_matrices_score_between_zero_and_one(norm):
    rng = np.random.default_rng(11)
    for _ in range(200):
        m = rng.poisson(rng.uniform(0.1, 5), (6, 6))
        s = symmetry_score(m, norm)
        assert s is None or 0 <= s <= 1
