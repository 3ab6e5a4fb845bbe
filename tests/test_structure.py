"""Where flips go: dominant targets, significant pairs, catch-all columns."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binom

from labelflip_models.analysis.stats import wilson_interval
from labelflip_models.analysis.structure import catch_all, dominant_targets, pair_relations
from labelflip_models.errors import ConfigError, DataError

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX = {name: i for i, name in enumerate(FASHION)}


def fashion_like() -> np.ndarray:
    """Background of 10 flips per cell; Sandal<->Sneaker and Coat<->Pullover mutual, Dress->Trouser one-way."""
    m = np.full((10, 10), 10) + np.diag(np.full(10, 890))
    for a, b in (("Sandal", "Sneaker"), ("Sneaker", "Sandal"), ("Coat", "Pullover"), ("Pullover", "Coat"),
                 ("Dress", "Trouser")):
        m[IDX[a], IDX[b]] = 200
    m[IDX["Trouser"], IDX["Dress"]] = 0
    return m


def test_fashion_like_relations_are_exactly_the_planted_ones():
    pairs = pair_relations(fashion_like(), FASHION)
    assert [(p["a"], p["b"], p["kind"]) for p in pairs] == [
        ("Pullover", "Coat", "symmetric"), ("Sandal", "Sneaker", "symmetric"), ("Dress", "Trouser", "one-way")]
    one_way = pairs[2]
    assert (one_way["a_to_b"], one_way["b_to_a"]) == (200, 0)
    assert one_way["share_a_to_b"]["share"] == pytest.approx(200 / 280)
    assert one_way["share_b_to_a"]["share"] == 0.0
    lo, hi = wilson_interval(200, 280)
    assert one_way["share_a_to_b"]["ci"] == pytest.approx([float(lo), float(hi)])
    assert one_way["share_a_to_b"]["ci"][0] > 1 / 9 > one_way["share_b_to_a"]["ci"][1]
    json.dumps(pairs, allow_nan=False)


def test_one_way_is_oriented_strong_direction_first():
    m = fashion_like().T.copy()  # now Trouser -> Dress, with Trouser the lower index
    m[np.diag_indices(10)] = 890
    kinds = {(p["a"], p["b"]): p["kind"] for p in pair_relations(m, FASHION)}
    assert kinds[("Trouser", "Dress")] == "one-way"


def test_uniform_flips_have_no_relations_or_catch_alls():
    m = np.full((10, 10), 30) + np.diag(np.full(10, 500))
    assert pair_relations(m, FASHION) == []
    out = catch_all(m, FASHION)
    assert out["classes"] == [] and out["flips"] == 2700 and out["threshold"] == pytest.approx(0.2)
    assert all(s["share"] == pytest.approx(0.1) for s in out["shares"].values())


def test_catch_all_column():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 5, (10, 10))
    m[:, IDX["Shirt"]] += 60
    m[np.diag_indices(10)] = 700
    out = catch_all(m, FASHION)
    assert out["classes"] == ["Shirt"]
    off = m * (1 - np.eye(10, dtype=int))
    shirt = out["shares"]["Shirt"]
    assert shirt["count"] == off[:, IDX["Shirt"]].sum() and out["flips"] == off.sum()
    assert shirt["ci"] == pytest.approx([float(v) for v in wilson_interval(shirt["count"], out["flips"])])
    assert sum(s["count"] for s in out["shares"].values()) == out["flips"]
    json.dumps(out, allow_nan=False)
    assert catch_all(np.eye(10, dtype=int), FASHION)["classes"] == []


def test_dominant_target_hand_case():
    m = np.array([[50, 30, 5, 5],
                  [5, 50, 5, 0],   # tie between class 0 and class 2 -> lowest index wins
                  [0, 0, 50, 0],   # no flips
                  [0, 0, 1, 50]])  # one flip, no runner-up
    out = dominant_targets(m, ["a", "b", "c", "d"])
    a = out["a"]
    assert (a["target"], a["count"], a["flips"], a["runner_up"], a["runner_up_count"]) == ("b", 30, 40, "c", 5)
    assert a["share"] == pytest.approx(0.75)
    assert a["ci"] == pytest.approx([float(v) for v in wilson_interval(30, 40)])
    assert a["p_value"] == pytest.approx(binom.sf(29, 35, 0.5)) and a["strong"]
    b = out["b"]
    assert (b["target"], b["runner_up"], b["count"], b["runner_up_count"]) == ("a", "c", 5, 5)
    assert b["p_value"] == pytest.approx(binom.sf(4, 10, 0.5)) and not b["strong"]
    assert out["c"] == {"target": None, "count": 0, "flips": 0, "share": None, "ci": None,
                        "runner_up": None, "runner_up_count": 0, "p_value": None, "strong": False}
    d = out["d"]
    assert (d["target"], d["runner_up"], d["runner_up_count"]) == ("c", None, 0)
    assert d["p_value"] == pytest.approx(0.5) and not d["strong"]
    json.dumps(out, allow_nan=False)


def test_dominant_targets_on_fashion_like_and_two_classes():
    out = dominant_targets(fashion_like(), FASHION)
    assert out["Sandal"]["target"] == "Sneaker" and out["Sandal"]["strong"]
    assert out["Dress"]["target"] == "Trouser" and out["Dress"]["strong"]
    assert not out["Bag"]["strong"]  # uniform background: a tie, ending on the lowest index
    assert out["Bag"]["target"] == "T-shirt/top"
    two = dominant_targets(np.array([[5, 12], [0, 5]]), ["x", "y"])
    assert two["x"]["target"] == "y" and two["x"]["runner_up"] is None
    assert two["x"]["p_value"] == pytest.approx(0.5 ** 12)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="class names"):
        pair_relations(np.eye(3, dtype=int), ["a", "b"])
    with pytest.raises(DataError):
        catch_all(np.array([[1, -2], [0, 1]]), ["a", "b"])
    with pytest.raises(ConfigError):
        dominant_targets(np.eye(3, dtype=int), ["a", "b", "c"], alpha=0)
    with pytest.raises(ConfigError):
        catch_all(np.eye(3, dtype=int), ["a", "b", "c"], factor=0)
