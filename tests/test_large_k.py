"""Many classes (2 <= K <= 1000): the flip matrix's sparse storage above DENSE_MAX_CLASSES, the analysis computed
from nonzero cells, robust accuracy, and reports that list the top TOP_N classes and pairs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from scipy.stats import binomtest

from labelflip_models.analysis import symmetry
from labelflip_models.analysis.flip_matrix import (
    DENSE_MAX_CLASSES,
    flip_matrix,
    matrix_csv,
    matrix_from_json,
    matrix_to_json,
    read_csv,
    to_csv,
    to_pairs_csv,
)
from labelflip_models.analysis.min_norms import minimal_norm_summary
from labelflip_models.analysis.noise import noise_summary
from labelflip_models.analysis.structure import TOP_N, dominant_targets, pair_relations, top_pairs, worst_classes
from labelflip_models.analysis.symmetry import symmetry_analysis, symmetry_score
from labelflip_models.attacks import AttackResult
from labelflip_models.errors import DataError
from labelflip_models.gate.baselines import load_baseline, write_baseline
from labelflip_models.gate.profiles import Case
from labelflip_models.reports.load import load_runs
from labelflip_models.reports.plots import _heatmap_classes, heatmap_png, noise_png, trend_png
from labelflip_models.reports.write import write_report
from labelflip_models.runs.results import RESULT_SCHEMA, summarize, write_run


def sparse_matrix(k: int, per_class: int = 50, seed: int = 0) -> np.ndarray:
    """A flip matrix like a K-class run's: most images kept, the rest landing on a few favoured classes."""
    rng = np.random.default_rng(seed)
    m = np.zeros((k, k), dtype=np.int64)
    favoured = (np.arange(k)[:, None] + rng.integers(1, k, (k, 3))) % k
    for i in range(k):
        flips = rng.integers(0, per_class // 2)
        np.add.at(m[i], np.where(rng.random(flips) < 0.7, favoured[i, rng.integers(0, 3, flips)],
                                 (i + rng.integers(1, k, flips)) % k), 1)
        m[i, i] += per_class - flips
    return m


def attack_result(labels: list[int], clean: list[int], adv: list[int]) -> AttackResult:
    n = len(labels)
    images = torch.zeros(n, 1)
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return AttackResult(epsilon=0.1, norm="linf", images=images, labels=t(labels), raw=images + 0.05,
                        clipped=images + 0.05, success=t(adv) != t(labels), attacked=torch.ones(n, dtype=torch.bool),
                        clean_pred=t(clean), adv_pred=t(adv), seconds=1.0,
                        params={"name": "linf-pgd", "epsilon": 0.1, "norm": "linf", "seed": 0})


def run_of(matrix: np.ndarray, seed: int = 0) -> AttackResult:
    """An attack run whose flip matrix is `matrix` (every image classified correctly before the attack)."""
    true, landed = np.nonzero(matrix)
    true, landed = np.repeat(true, matrix[true, landed]), np.repeat(landed, matrix[true, landed])
    return attack_result(true.tolist(), true.tolist(), landed.tolist())


def result_json(matrix: np.ndarray, names: list[str]) -> dict[str, Any]:
    result = summarize(run_of(matrix), names, 0)
    return {"schema": RESULT_SCHEMA, "dataset": {"name": "synthetic", "n": int(matrix.sum()), "selection": "all"},
            "model": {"sha256": "0" * 64}, "attack": {"name": "linf-pgd", "epsilon": 0.1, "norm": "linf", "seed": 0},
            **result, "provenance": {"seed": 0}}


def names_of(k: int) -> list[str]:
    return [f"class {i}" for i in range(k)]


# --- storage --------------------------------------------------------------------------------------------------------

def test_sparse_round_trip_is_exact(tmp_path: Path) -> None:
    k = 150
    m = sparse_matrix(k)
    m[7] = 0  # a class without images that nothing lands in: still named and still all zeros
    m[:, 7] = 0
    m[9, 9] = 0  # a class whose images all left it
    stored = json.loads(json.dumps(matrix_to_json(m)))
    assert stored["format"] == "coo" and stored["shape"] == [k, k]
    assert len(stored["counts"]) == np.count_nonzero(m) and min(stored["counts"]) > 0
    np.testing.assert_array_equal(matrix_from_json(stored), m)
    names = names_of(k)
    names[3], names[4] = "a, b", 'say "hi"'  # names the CSV must quote
    path = tmp_path / "flip_pairs.csv"
    path.write_text(matrix_csv(m, names), encoding="utf-8")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "true,landed,count"
    assert len(lines) - 1 == np.count_nonzero(m | np.eye(k, dtype=bool))  # nonzero cells and every diagonal
    assert "class 7,class 7,0" in lines and "class 9,class 9,0" in lines
    got, got_names = read_csv(path)
    assert got_names == names
    np.testing.assert_array_equal(got, m)


def test_ten_classes_stay_dense(tmp_path: Path) -> None:
    m = sparse_matrix(10)
    names = names_of(10)
    assert matrix_to_json(m) == m.tolist() and matrix_csv(m, names) == to_csv(m, names)
    result = result_json(m, names)
    assert result["flip_matrix"] == m.tolist()
    csv_path, json_path = write_run(tmp_path, result)
    assert csv_path.name == "flip_matrix.csv" and csv_path.read_text() == to_csv(m, names)
    assert json.loads(json_path.read_text())["flip_matrix"] == m.tolist()


@pytest.mark.parametrize("k, dense", [(DENSE_MAX_CLASSES, True), (DENSE_MAX_CLASSES + 1, False)])
def test_storage_switches_above_dense_max_classes(tmp_path: Path, k: int, dense: bool) -> None:
    m = sparse_matrix(k, per_class=8)
    result = result_json(m, names_of(k))
    assert isinstance(result["flip_matrix"], list) is dense
    (tmp_path / "flip_matrix.csv").write_text("left by an earlier run\n")
    (tmp_path / "flip_pairs.csv").write_text("left by an earlier run\n")
    csv_path, json_path = write_run(tmp_path, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([csv_path.name, "result.json"])
    assert csv_path.name == ("flip_matrix.csv" if dense else "flip_pairs.csv")
    np.testing.assert_array_equal(read_csv(csv_path)[0], m)
    np.testing.assert_array_equal(matrix_from_json(json.loads(json_path.read_text())["flip_matrix"]), m)
    (results, _) = load_runs([tmp_path])
    assert results[0]["class_names"] == names_of(k)


@pytest.mark.parametrize("stored, message", [
    ({"format": "coo", "shape": [3, 3], "rows": [0, 0], "cols": [1, 1], "counts": [1, 2]}, "twice"),
    ({"format": "coo", "shape": [3, 3], "rows": [0], "cols": [3], "counts": [1]}, "0..2"),
    ({"format": "coo", "shape": [3, 3], "rows": [0], "cols": [1], "counts": [True]}, "non-negative integers"),
    ({"format": "coo", "shape": [3, 3], "rows": [0], "cols": [1], "counts": [-1]}, "non-negative integers"),
    ({"format": "coo", "shape": [3, 3], "rows": [0, 1], "cols": [1], "counts": [1]}, "as many"),
    ({"format": "coo", "shape": [3, 2], "rows": [], "cols": [], "counts": []}, "square"),
    ({"format": "csr"}, "nested list"),
    ([[1, 2], [3]], "2x2"),
    ([[1, 2.5], [3, 4]], "non-negative integers"),
])
def test_malformed_stored_matrices_are_rejected(stored: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        matrix_from_json(stored)


def test_pairs_csv_rejections(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    for body, message in (("a,a,1\nb,b,1\na,c,2\n", "not among the true classes"), ("a,a,1\nb,b,x\n", "integers"),
                          ("a,a,1\nb,b,1\na,a,2\n", "twice"), ("a,a,1\n", "at least 2")):
        path.write_text("true,landed,count\n" + body)
        with pytest.raises(DataError, match=message):
            read_csv(path)
    assert to_pairs_csv(np.array([[1, 0], [2, 0]]), ["a", "b"]) == "true,landed,count\na,a,1\nb,a,2\nb,b,0\n"


def test_baseline_csv_follows_the_same_rule(tmp_path: Path) -> None:
    k = DENSE_MAX_CLASSES + 1
    m = sparse_matrix(k, per_class=8)
    result = result_json(m, names_of(k))
    case = Case("smoke", "synthetic", "linf-pgd", 0.1)
    write_baseline(case, tmp_path, result)
    assert case.baseline_path(tmp_path, ".csv").read_text().startswith("true,landed,count\n")
    assert load_baseline(case, tmp_path, names_of(k), int(m.sum()))["result"]["flip_matrix"] == result["flip_matrix"]


# --- robust accuracy ------------------------------------------------------------------------------------------------

def test_robust_accuracy_on_a_hand_made_run() -> None:
    # Class 0: 4 images, 1 misclassified already, 1 flipped -> 2 of 4 robust. Class 1: 2 images, both robust.
    # Class 2: 2 images, 1 flipped -> 1 of 2. Class 3: no images.
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    clean = [0, 0, 0, 1, 1, 1, 2, 2]
    adv = [0, 0, 2, 1, 1, 1, 2, 0]
    acc = summarize(attack_result(labels, clean, adv), ["a", "b", "c", "d"], 0)["robust_accuracy"]
    assert acc["overall"]["count"] == 5 and acc["overall"]["n"] == 8 and acc["overall"]["rate"] == 5 / 8
    assert {c: (r["count"], r["n"], r["rate"]) for c, r in acc["per_class"].items()} == {
        "a": (2, 4, 0.5), "b": (2, 2, 1.0), "c": (1, 2, 0.5), "d": (0, 0, None)}
    assert acc["per_class"]["d"]["ci"] == [0.0, 1.0]
    lo, hi = acc["per_class"]["a"]["ci"]
    assert 0 < lo < 0.5 < hi < 1
    assert acc["worst"] == {"class": "a", **acc["per_class"]["a"]}  # tie with "c": the first class
    assert acc["spread"]["max_minus_min"] == 0.5
    assert acc["spread"]["std"] == pytest.approx(np.std([0.5, 1.0, 0.5]))


def test_robust_accuracy_without_images() -> None:
    acc = summarize(attack_result([], [], []), ["a", "b"], 0)["robust_accuracy"]
    assert acc["worst"] is None and acc["spread"] is None and acc["overall"]["rate"] is None


# --- analysis -------------------------------------------------------------------------------------------------------

def test_top_pairs_and_worst_classes_at_1000_classes_are_the_real_top() -> None:
    k = 1000
    m = sparse_matrix(k, seed=3)
    names = names_of(k)
    off = m * (1 - np.eye(k, dtype=np.int64))
    cells = sorted(((-off[i, j], i, j) for i, j in zip(*np.nonzero(off))))[:TOP_N]
    top = top_pairs(m, names)
    assert [(p["true"], p["landed"], p["count"]) for p in top] == [(names[i], names[j], -c) for c, i, j in cells]
    assert all(p["n"] == m[int(p["true"].split()[1])].sum() and p["ci"][0] <= p["rate"] <= p["ci"][1] for p in top)
    rates = [(-(off[i].sum() / m[i].sum()), i) for i in range(k)]
    assert [w["class"] for w in worst_classes(m, names)] == [names[i] for _, i in sorted(rates)[:TOP_N]]


def test_dominant_targets_and_pairs_match_the_definitions_at_many_classes() -> None:
    k = 200
    m = sparse_matrix(k, per_class=400, seed=4)
    m[5, 9], m[9, 5] = 150, 140  # a pair flipped both ways far above chance
    names = names_of(k)
    off = m * (1 - np.eye(k, dtype=np.int64))
    targets = dominant_targets(m, names)
    for i in range(0, k, 7):
        row = np.where(np.arange(k) == i, -1, off[i])
        first, second = np.argsort(-row, kind="stable")[:2]
        t = targets[names[i]]
        if not off[i].any():
            assert t["target"] is None and t["p_value"] is None
            continue
        assert (t["target"], t["count"]) == (names[first], off[i, first])
        p = binomtest(int(off[i, first]), int(off[i, first] + off[i, second]), 0.5, alternative="greater").pvalue
        assert t["p_value"] == p
    pairs = pair_relations(m, names)
    assert {"a": "class 5", "b": "class 9", "kind": "symmetric"}.items() <= pairs[0].items()
    assert all(p["a_to_b"] + p["b_to_a"] > 0 for p in pairs)


def test_symmetry_scores_from_cells_equal_the_dense_definition() -> None:
    rng = np.random.default_rng(5)
    for k in (2, 5, 150):
        m = sparse_matrix(k, per_class=20, seed=int(rng.integers(100))) if k > 5 else rng.integers(0, 9, (k, k))
        off = m * (1 - np.eye(k))
        sym, anti = np.abs(off + off.T) / 2, np.abs(off - off.T) / 2
        for norm, (s, a) in {"entrywise": (sym.sum(), anti.sum()),
                             "induced": (sym.sum(0).max(), anti.sum(0).max())}.items():
            assert symmetry_score(m, norm) == (s - a) / (s + a)  # bit for bit: the sums are exact


def test_sparse_permutation_null_matches_the_shuffle() -> None:
    """Above DENSE_MAX_CLASSES only the nonzero counts are placed; their null must be the shuffle's."""
    rng = np.random.default_rng(6)
    k = DENSE_MAX_CLASSES + 20
    m = rng.poisson(0.05, (k, k)) * 3 + np.diag(rng.integers(20, 40, k))
    m[5] = rng.integers(1, 4, k)  # a row more than half full: shuffled whole
    dense = symmetry._scored(symmetry._dense_null(m, 2000, np.random.default_rng(1)))
    sparse = symmetry._scored(symmetry._sparse_null(m, 2000, np.random.default_rng(2)))
    for norm in ("entrywise", "induced"):
        se = np.hypot(dense[norm].std(), sparse[norm].std()) / np.sqrt(2000)
        assert abs(dense[norm].mean() - sparse[norm].mean()) < 4 * se
        assert sparse[norm].std() == pytest.approx(dense[norm].std(), rel=0.1)


def test_sparse_placement_keeps_each_rows_counts_at_distinct_positions() -> None:
    rng = np.random.default_rng(7)
    k = 130
    m = rng.poisson(0.3, (k, k)) + np.diag(np.full(k, 5))
    m[3] = 2  # a full row
    off = m * (1 - np.eye(k, dtype=np.int64))
    for cells in symmetry._sparse_null(m, 12, rng):
        for r in range(len(cells.counts)):
            shuffled = np.zeros((k, k), dtype=np.int64)
            np.add.at(shuffled, (cells.rows, cells.cols[r]), cells.counts[r])
            assert (np.diag(shuffled) == 0).all()
            assert all(sorted(shuffled[i]) == sorted(off[i]) for i in range(k))  # same counts, no cell twice
            np.testing.assert_array_equal(cells.rev[r], shuffled[cells.cols[r], cells.rows])


def test_symmetry_analysis_above_dense_max_classes() -> None:
    k = 300
    m = sparse_matrix(k, seed=8)
    m[10, 11], m[11, 10] = 40, 40
    out = symmetry_analysis(m, resamples=300, seed=1)
    assert out == symmetry_analysis(m, resamples=300, seed=1)
    for norm in ("entrywise", "induced"):
        assert out[norm]["score"] == symmetry_score(m, norm)
        assert 0 <= out[norm]["ci"][0] <= out[norm]["ci"][1] <= 1 and out[norm]["se"] > 0
    json.dumps(out, allow_nan=False)


def test_minimal_norms_grouped_equal_a_mask_per_class_and_pair() -> None:
    rng = np.random.default_rng(9)
    k, n = 40, 3000
    labels = rng.integers(0, k, n)
    landed = np.where(rng.random(n) < 0.5, labels, rng.integers(0, k, n))
    norms, success, attacked = rng.random(n), rng.random(n) < 0.8, rng.random(n) < 0.9
    out = minimal_norm_summary(labels, landed, norms, success, attacked, names_of(k))
    values = np.where(success, norms, np.inf)
    for c in range(0, k, 5):
        x = np.sort(values[attacked & (labels == c)])
        entry = out["per_class"][f"class {c}"]
        assert entry["n"] == len(x) and entry["failed"] == int((attacked & (labels == c) & ~success).sum())
    flipped = attacked & success & (landed != labels)
    for key, entry in list(out["per_pair"].items())[::17]:
        t, to = (int(s.split()[1]) for s in key.split(" -> "))
        x = norms[flipped & (labels == t) & (landed == to)]
        assert (entry["n"], entry["median"]) == (len(x), float(np.median(x)))
        assert [entry["q25"], entry["q75"]] == np.percentile(x, [25, 75]).tolist()


# --- reports --------------------------------------------------------------------------------------------------------

def test_heatmap_of_many_classes_shows_the_top_classes() -> None:
    k = 60
    m = np.diag(np.full(k, 30))
    busy = np.arange(5, 5 + TOP_N) * 2  # the classes in the most flips
    for i, j in zip(busy, np.roll(busy, 1)):
        m[i, j] += 10
        m[i, i] -= 10
    m[1, 2] += 1  # a few flips elsewhere
    np.testing.assert_array_equal(_heatmap_classes(m), np.sort(busy))
    np.testing.assert_array_equal(_heatmap_classes(m[:TOP_N, :TOP_N]), np.arange(TOP_N))
    result = {"class_names": names_of(k), "flip_matrix": matrix_to_json(m), "dataset": {"name": "synthetic"},
              "attack": {"name": "linf-pgd", "epsilon": 0.1}}
    pixels = imread(io.BytesIO(heatmap_png(result)), format="png")
    assert pixels.shape[:2] == (660, 770) and pixels[..., :3].std() > 0.1


def test_report_of_many_classes_lists_the_top_n(tmp_path: Path) -> None:
    k = 150
    m = sparse_matrix(k, per_class=20, seed=10)
    result = result_json(m, names_of(k))
    files = write_report(tmp_path, [result], [])
    summary = files["summary.md"].read_text()
    for title in ("#### Robust accuracy\n", "#### Most frequent flips",
                  f"#### Robust accuracy per class ({TOP_N} of {k} classes: the least robust)",
                  f"#### Dominant flip target per class ({TOP_N} of {k} classes: the most flipped)"):
        assert title in summary
    assert "Significant class pairs" not in summary
    tables = summary.split("#### ")[1:]
    assert all(sum(line.startswith("| ") for line in t.splitlines()) <= TOP_N + 1 for t in tables)
    worst = result["robust_accuracy"]["worst"]
    assert f"| {worst['class']} |" in summary
    assert json.loads(files["report.json"].read_text())["runs"][0]["n"] == m.sum()


def test_report_of_ten_classes_lists_every_class(tmp_path: Path) -> None:
    m = sparse_matrix(10, per_class=30, seed=11)
    summary = write_report(tmp_path, [result_json(m, names_of(10))], [])["summary.md"].read_text()
    per_class = summary.split("#### Robust accuracy per class — linf-pgd, ε = 0.1")[1].split("####")[0]
    assert sum(line.startswith("| class ") for line in per_class.splitlines()) == 10
    assert "Significant class pairs" in summary and "Most frequent flips" not in summary


def test_flip_matrix_helper_builds_what_summarize_stores() -> None:
    m = sparse_matrix(DENSE_MAX_CLASSES + 5, per_class=6, seed=12)
    run = run_of(m)
    np.testing.assert_array_equal(flip_matrix(run.labels.numpy(), run.landed.numpy(), len(m)), m)
    stored = summarize(run, names_of(len(m)), 0)["flip_matrix"]
    np.testing.assert_array_equal(matrix_from_json(stored), m)


def test_noise_and_trend_charts_of_many_classes() -> None:
    k = 300
    names = names_of(k)
    counts = np.random.default_rng(13).poisson(3, k)
    noise = {"class_names": names, "n": int(counts.sum()), "bounds": [0.0, 1.0], "dataset": {"name": "synthetic"},
             "histogram": noise_summary(counts, names)}
    assert imread(io.BytesIO(noise_png(noise)), format="png").shape[:2] == (440, 770)
    runs = []
    for eps, seed in ((0.05, 14), (0.1, 15)):
        run = result_json(sparse_matrix(k, per_class=10, seed=seed), names)
        runs.append({**run, "attack": {**run["attack"], "epsilon": eps}})
    assert imread(io.BytesIO(trend_png(runs)), format="png").shape[:2] == (770, 880)
