"""Flip matrices, per-class flip counts, Wilson intervals, and the flip-matrix CSV format."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelflip_models.analysis.flip_matrix import CORNER, class_flips, flip_matrix, read_csv, to_csv, write_csv
from labelflip_models.analysis.stats import one_sided_wilson, wilson_interval
from labelflip_models.errors import DataError

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


EPS = 1e-12


def reference_wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Textbook Wilson score interval, written independently of the code under test."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------------------------------
# flip_matrix / class_flips
# --------------------------------------------------------------------------------------------------

def test_flip_matrix_small_example():
    true = np.array([0, 0, 1, 2, 2, 2])
    landed = np.array([0, 1, 1, 0, 2, 1])
    m = flip_matrix(true, landed, 3)
    assert m.tolist() == [[1, 1, 0],
                          [0, 1, 0],
                          [1, 1, 1]]  # row = true class, column = class landed in
    assert m.shape == (3, 3) and np.issubdtype(m.dtype, np.integer)


def test_flip_matrix_is_not_transposed():
    # one image of class 0 that lands in class 2
    m = flip_matrix(np.array([0]), np.array([2]), 3)
    assert m[0, 2] == 1 and m[2, 0] == 0 and m.sum() == 1


def test_flip_matrix_counts_every_image_exactly_once():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 500)
    landed = np.where(rng.random(500) < 0.7, true, rng.integers(0, 10, 500))
    m = flip_matrix(true, landed, 10)
    assert m.sum() == 500
    assert m.sum(1).tolist() == np.bincount(true, minlength=10).tolist()
    assert m.sum(0).tolist() == np.bincount(landed, minlength=10).tolist()
    for i in range(10):
        for j in range(10):
            assert m[i, j] == int(np.sum((true == i) & (landed == j)))


def test_flip_matrix_unused_classes_and_empty_input():
    m = flip_matrix(np.array([1, 1]), np.array([1, 1]), 4)
    assert m.shape == (4, 4) and m[1, 1] == 2 and m.sum() == 2
    empty = flip_matrix(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3)
    assert empty.shape == (3, 3) and empty.sum() == 0


@pytest.mark.parametrize("true, landed, which", [
    ([0, 3], [0, 1], "true"),
    ([0, -1], [0, 1], "true"),
    ([0, 1], [0, 3], "landed"),
    ([0, 1], [-1, 1], "landed"),
])
def test_flip_matrix_rejects_out_of_range_classes(true, landed, which):
    with pytest.raises(ValueError, match=f"{which} classes must lie in 0..2"):
        flip_matrix(np.array(true), np.array(landed), 3)


def test_flip_matrix_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"true \(3,\) and landed \(2,\) differ in shape"):
        flip_matrix(np.array([0, 1, 2]), np.array([0, 1]), 3)


def test_class_flips():
    m = np.array([[5, 1, 0],
                  [0, 4, 0],
                  [2, 3, 1]])
    flipped, totals = class_flips(m)
    assert flipped.tolist() == [1, 0, 5]
    assert totals.tolist() == [6, 4, 6]


def test_class_flips_of_flip_matrix():
    true = np.array([0, 0, 0, 1, 1, 2])
    landed = np.array([0, 2, 1, 1, 1, 0])
    flipped, totals = class_flips(flip_matrix(true, landed, 4))
    assert flipped.tolist() == [2, 0, 1, 0]
    assert totals.tolist() == [3, 2, 1, 0]


# --------------------------------------------------------------------------------------------------
# Wilson intervals
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, lo, hi", [
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (1, 10, 0.0179, 0.4042),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval_known_values_95(k, n, lo, hi):
    got_lo, got_hi = wilson_interval(k, n)
    assert float(got_lo) == pytest.approx(lo, abs=1e-4)
    assert float(got_hi) == pytest.approx(hi, abs=1e-4)


@pytest.mark.parametrize("confidence, z", [(0.90, 1.6448536269514722), (0.99, 2.5758293035489004)])
@pytest.mark.parametrize("k, n", [(0, 7), (3, 7), (7, 7), (17, 250)])
def test_wilson_interval_matches_textbook_formula(k, n, confidence, z):
    lo, hi = wilson_interval(k, n, confidence)
    ref_lo, ref_hi = reference_wilson(k, n, z)
    assert float(lo) == pytest.approx(ref_lo, abs=1e-12)
    assert float(hi) == pytest.approx(ref_hi, abs=1e-12)


def test_wilson_interval_n_zero_is_uninformative():
    lo, hi = wilson_interval(0, 0)
    assert float(lo) == 0.0 and float(hi) == 1.0
    lo, hi = wilson_interval(np.array([0, 2, 0]), np.array([0, 4, 0]), 0.8)
    assert lo[0] == 0.0 and hi[0] == 1.0 and lo[2] == 0.0 and hi[2] == 1.0
    assert 0.0 < lo[1] < 0.5 < hi[1] < 1.0


def test_wilson_interval_vectorised_equals_scalar():
    k = np.array([0, 1, 4, 9, 30])
    n = np.array([10, 10, 20, 9, 200])
    lo, hi = wilson_interval(k, n)
    assert lo.shape == hi.shape == (5,)
    for i in range(5):
        s_lo, s_hi = wilson_interval(int(k[i]), int(n[i]))
        assert lo[i] == pytest.approx(float(s_lo)) and hi[i] == pytest.approx(float(s_hi))


def test_wilson_interval_monotone_in_confidence():
    levels = [0.5, 0.8, 0.9, 0.95, 0.99, 0.999]
    for k, n in [(0, 10), (5, 10), (3, 40), (40, 40)]:
        bounds = [wilson_interval(k, n, c) for c in levels]
        los = [float(b[0]) for b in bounds]
        his = [float(b[1]) for b in bounds]
        widths = [hi - lo for lo, hi in zip(los, his)]
        # EPS: at k = 0 / k = n the bounds sit within an ulp of 0 / 1 (see test_wilson_endpoints_exact)
        assert all(a >= b - EPS for a, b in zip(los, los[1:])), (k, n, los)
        assert all(a <= b + EPS for a, b in zip(his, his[1:])), (k, n, his)
        assert all(a < b for a, b in zip(widths, widths[1:])), (k, n, widths)
        for lo, hi in zip(los, his):
            assert 0.0 <= lo <= k / n + EPS and k / n - EPS <= hi <= 1.0


def test_wilson_interval_narrows_with_more_data():
    w_small = np.subtract(*wilson_interval(5, 10)[::-1])
    w_large = np.subtract(*wilson_interval(500, 1000)[::-1])
    assert float(w_large) < float(w_small) / 5


@pytest.mark.parametrize("confidence", [0, 1, -0.1, 1.5])
def test_wilson_interval_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence must lie in \\(0, 1\\)"):
        wilson_interval(1, 10, confidence)


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 1000), (999, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_one_sided_wilson_brackets_the_rate(k, n, confidence):
    lower = float(one_sided_wilson(k, n, confidence, "lower"))
    upper = float(one_sided_wilson(k, n, confidence, "upper"))
    assert 0.0 <= lower <= 1.0 and 0.0 <= upper <= 1.0
    # EPS: at k = 0 / k = n the bounds sit within an ulp of 0 / 1 (see test_wilson_endpoints_exact)
    assert lower <= k / n + EPS and upper >= k / n - EPS
    if 0 < k < n:
        assert lower < k / n < upper
    if k == 0:
        assert lower == pytest.approx(0.0, abs=EPS) and upper > 0.0
    if k == n:
        assert upper == pytest.approx(1.0, abs=EPS) and lower < 1.0


def test_wilson_endpoints_exact():
    n = np.arange(1, 301)
    for confidence in (0.8, 0.9, 0.95, 0.99):
        lo0, _ = wilson_interval(np.zeros_like(n), n, confidence)
        _, hin = wilson_interval(n, n, confidence)
        assert np.all(lo0 == 0.0) and np.all(hin == 1.0)


def test_one_sided_wilson_is_two_sided_at_2c_minus_1():
    lo90, hi90 = wilson_interval(5, 10, 0.90)
    assert float(one_sided_wilson(5, 10, 0.95, "lower")) == pytest.approx(float(lo90))
    assert float(one_sided_wilson(5, 10, 0.95, "upper")) == pytest.approx(float(hi90))
    # z(0.95 one-sided) = 1.6449
    ref_lo, ref_hi = reference_wilson(5, 10, 1.6448536269514722)
    assert float(one_sided_wilson(5, 10, 0.95, "lower")) == pytest.approx(ref_lo, abs=1e-12)
    assert float(one_sided_wilson(5, 10, 0.95, "upper")) == pytest.approx(ref_hi, abs=1e-12)
    # one-sided bounds are tighter than the two-sided interval at the same confidence
    lo95, hi95 = wilson_interval(5, 10, 0.95)
    assert float(lo95) < float(one_sided_wilson(5, 10, 0.95, "lower"))
    assert float(one_sided_wilson(5, 10, 0.95, "upper")) < float(hi95)


def test_one_sided_wilson_vectorised_and_n_zero():
    lower = one_sided_wilson(np.array([0, 3]), np.array([0, 6]), 0.95, "lower")
    upper = one_sided_wilson(np.array([0, 3]), np.array([0, 6]), 0.95, "upper")
    assert lower[0] == 0.0 and upper[0] == 1.0
    assert lower[1] < 0.5 < upper[1]


def test_one_sided_wilson_rejects_confidence_at_or_below_half():
    with pytest.raises(ValueError, match="confidence must lie"):
        one_sided_wilson(1, 10, 0.5, "lower")


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------

def test_corner_cell():
    assert CORNER == "true \\ adversarial"
    assert len(CORNER) == 18 and CORNER.count("\\") == 1


def test_to_csv_exact_layout():
    m = np.array([[7, 2, 0],
                  [1, 9, 3],
                  [0, 0, 12]])
    text = to_csv(m, ["T-shirt/top", "Ankle boot", "Bag"])
    assert text == (
        "true \\ adversarial,T-shirt/top,Ankle boot,Bag\n"
        "T-shirt/top,7,2,0\n"
        "Ankle boot,1,9,3\n"
        "Bag,0,0,12\n"
    )
    assert text.splitlines()[0].split(",")[0] == "true \\ adversarial"


def test_to_csv_rejects_wrong_number_of_names():
    with pytest.raises(ValueError, match=r"matrix \(2, 2\) does not fit 3 class names"):
        to_csv(np.zeros((2, 2), dtype=int), ["a", "b", "c"])


def test_csv_round_trip_fashion_names(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.integers(0, 1000, (10, 10))
    path = tmp_path / "flips" / "fashion.csv"
    write_csv(path, m, FASHION)
    text = path.read_text(encoding="utf-8")
    header = text.splitlines()[0].split(",")
    assert header == ["true \\ adversarial", *FASHION]
    assert text.splitlines()[1].startswith("T-shirt/top,")
    assert text.splitlines()[10].startswith("Ankle boot,")
    got, names = read_csv(path)
    assert names == list(FASHION)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, m)


def test_csv_round_trip_names_needing_quotes(tmp_path):
    names = ["a, b", 'say "hi"', "x/y z", "0"]
    m = np.arange(16).reshape(4, 4)
    path = tmp_path / "q.csv"
    path.write_text(to_csv(m, names), encoding="utf-8")
    got, got_names = read_csv(path)
    assert got_names == names
    assert got.tolist() == m.tolist()


def _write(tmp_path, text: str):
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    return path


GOOD_HEADER = "true \\ adversarial,a,b\n"


@pytest.mark.parametrize("body, message", [
    ("a,1,x\nb,0,2\n", "entries must be integers"),
    ("a,1,1.5\nb,0,2\n", "entries must be integers"),
    ("a,1,\nb,0,2\n", "entries must be integers"),
    ("a,1,-1\nb,0,2\n", "entries must be non-negative"),
    ("a,1,2\n", "one row per class and 3 columns"),
    ("a,1,2\nb,0,2\nc,0,0\n", "one row per class and 3 columns"),
    ("a,1,2,3\nb,0,2,3\n", "one row per class and 3 columns"),
    ("a,1\nb,0\n", "one row per class and 3 columns"),
    ("b,1,2\na,0,2\n", r"row names \['b', 'a'\] differ from the header \['a', 'b'\]"),
    ("a,1,2\nB,0,2\n", "differ from the header"),
])
def test_read_csv_rejections(tmp_path, body, message):
    path = _write(tmp_path, GOOD_HEADER + body)
    with pytest.raises(DataError, match=message) as exc:
        read_csv(path)
    assert str(path) in str(exc.value)


def test_read_csv_accepts_the_good_version_of_the_rejected_files(tmp_path):
    m, names = read_csv(_write(tmp_path, GOOD_HEADER + "a,1,2\nb,0,2\n"))
    assert names == ["a", "b"] and m.tolist() == [[1, 2], [0, 2]]


@pytest.mark.parametrize("text", ["", "\n", "true \\ adversarial\n"])
def test_read_csv_empty(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match="empty flip matrix") as exc:
        read_csv(path)
    assert str(path) in str(exc.value)


def test_read_csv_header_without_rows(tmp_path):
    with pytest.raises(DataError, match="one row per class"):
        read_csv(_write(tmp_path, GOOD_HEADER))


def test_read_csv_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="cannot read flip matrix") as exc:
        read_csv(path)
    assert str(path) in str(exc.value)
