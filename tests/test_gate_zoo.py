"""The zoo of real model changes (gate/zoo.py) is measured by a script too costly for CI; CI checks its committed
output: docs/gate.md shows exactly the table of the committed records, and the records are whole."""

import json
import re
from pathlib import Path

import numpy as np

from labelflip_models.gate.profiles import get_profile
from labelflip_models.gate.zoo import RETRAIN_SEEDS, SCHEMA, failed_at, render, summary

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "zoo" / "fashion-mnist.json"


def test_docs_show_the_committed_zoo():
    zoo = json.loads(RECORDS.read_text())
    text = (REPO / "docs" / "gate.md").read_text()
    section = re.search(r"^## The gate on real model changes\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "docs/gate.md lacks the section '## The gate on real model changes'"
    assert render(zoo) in section.group(1), ("docs/gate.md's zoo table is stale; replace it with the output of "
                                             f"python -m labelflip_models.gate.zoo --table {RECORDS.relative_to(REPO)}")


def test_the_zoo_holds_every_kind_of_change():
    zoo = json.loads(RECORDS.read_text())
    assert zoo["schema"] == SCHEMA and zoo["complete"] and zoo["provenance"]["original_sha256"]
    kinds = [r["kind"] for r in zoo["models"]]
    # At least eight retrains of the same recipe, with the seeds the script trains.
    assert kinds.count("retrain") == len(zoo["retrain_seeds"]) >= 8 and set(zoo["retrain_seeds"]) <= set(RETRAIN_SEEDS)
    # Measured at the shipped smoke profile's size, the size whose error rates docs/gate.md states.
    assert zoo["images_per_class"] == get_profile("smoke").images_per_class("fgsm")
    assert kinds.count("re-export") == 3 and "fine-tune" in kinds
    for kind in ("weight noise", "pruning", "quantisation"):
        assert kinds.count(kind) >= 3
    for record in zoo["models"]:
        assert set(record["cases"]) == {f"{e:g}" for e in zoo["epsilons"]}
        assert all(len(c["truth"]) == len(zoo["class_names"]) for c in record["cases"].values())
    s = summary(zoo)
    assert s["retrains"] == len(zoo["retrain_seeds"]) and s["re_exports"] == 3


def test_model_changes_do_what_they_say(tmp_path):
    import torch
    from torch import nn

    from labelflip_models.gate.zoo import _noisy, _pruned, _quantised, _reexported

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    weights = [model[0].weight, model[2].weight]
    pruned = _pruned(model, 0.5)
    for w in (pruned[0].weight, pruned[2].weight):
        assert abs(float((w == 0).float().mean()) - 0.5) < 0.02
    quantised = _quantised(model, 4)
    for w in (quantised[0].weight, quantised[2].weight):
        assert len(torch.unique(w)) <= 15
    noisy = _noisy(model, 0.1)
    assert all(not torch.equal(a, b) for a, b in zip(weights, (noisy[0].weight, noisy[2].weight)))
    x = torch.rand(5, 1, 28, 28)
    for fmt in ("ts", "pt2", "safetensors"):
        assert torch.allclose(_reexported(model, fmt, (1, 28, 28), tmp_path)(x), model(x), atol=1e-5)


def test_summary_counts_false_alarms_against_the_truth():
    def counts(newly):
        """Class a's and b's paired counts of 100 images each, 10 flipped in the baseline; `newly` flip now."""
        return {"flips": [10 + k for k in newly], "n": [100, 100], "thresholds": [0.2, 0.2], "base_rates": [0.1, 0.1],
                "newly": list(newly), "no_longer": [0, 0], "paired_n": [100, 100], "base_flips": [10, 10]}

    def record(kind, truth, newly=(0, 0), norms_failed=(), ratios=(1.0, 1.0)):
        case = {"truth": truth, "counts": counts(newly), "failed_unpaired": [], "overall_failed": False}
        case["failed"] = failed_at(case["counts"], ["a", "b"], 0.05)
        return {"kind": kind, "name": kind, "clean_accuracy": 0.9, "cases": {"0.1": case},
                "norms": {"failed": list(norms_failed), "median_ratio": dict(zip("ab", ratios))}}

    zoo = {"margin": 0.05, "norm_margin": 0.1, "class_names": ["a", "b"], "epsilons": [0.1], "models": [
        record("original", [0.1, 0.1]),
        record("retrain", [0.12, 0.3], (0, 15), ["b"], (0.95, 0.6)),  # b truly rose by 0.2: a justified failure
        record("retrain", [0.14, 0.1], (15, 0), (), (1.05, 0.9)),  # a rose by 0.04 only: a false alarm
        record("re-export", [0.1, 0.1], (0, 0), ["a"]),  # a re-export failing only its norms still fails
        record("weight noise", [0.25, 0.1]),  # a rose by 0.15 and was missed
    ]}
    s = summary(zoo)
    assert {k: v for k, v in s.items() if k not in ("retrain_rises", "retrain_norm_ratios")} == {
        "retrains": 2, "false_alarms": 1, "retrains_failing": 2, "re_exports": 1, "re_exports_failing": 1,
        "regressions": 2, "caught": 1, "retrains_failing_norms": 1}
    assert sorted(s["retrain_rises"].round(3)) == [0.0, 0.02, 0.04, 0.2]
    assert sorted(s["retrain_norm_ratios"]) == [0.6, 0.9, 0.95, 1.05]
    # Decided again at a larger margin from the counts: 15 newly flipped of 100 is no clear rise beyond 0.10.
    wider = summary(zoo, 0.10)
    assert (wider["retrains_failing"], wider["false_alarms"], wider["regressions"], wider["caught"]) == (0, 0, 1, 0)
    table = render(zoo)
    assert "| retrain: retrain | 0.9000 | +0.200 | 1 | 1 | 0 | 0 | 0 | 1 |" in table
    assert "1 of 2 retrains fail a class whose true rise is at most the margin 0.05" in table
    assert "(4): the true change of the flip rate has median |change| 0.030, 90th percentile 0.152; 1 (25%)" in table
    assert "norms: 1 of 2 fail a class at the norm margin 10%" in table
    assert "| 0.05 | 2 of 2 | 1 | 1 of 2 | 1 of 1 |" in table and "| 0.10 | 0 of 2 | 0 | 0 of 1 | 1 of 1 |" in table


def test_a_longer_measurement_keeps_only_records_of_the_same_original(tmp_path):
    from labelflip_models.gate.margins import NORM_MARGIN, RATE_MARGIN
    from labelflip_models.gate.profiles import SMOKE_EPSILONS
    from labelflip_models.gate.zoo import _earlier

    out = tmp_path / "zoo.json"
    assert _earlier(out, "abc") is None  # nothing measured yet
    records = {"schema": SCHEMA, "margin": RATE_MARGIN, "norm_margin": NORM_MARGIN, "epsilons": list(SMOKE_EPSILONS),
               "images_per_class": get_profile("smoke").images_per_class("fgsm"),
               "provenance": {"original_sha256": "abc"}, "models": []}
    out.write_text(json.dumps(records))
    assert _earlier(out, "abc") == records
    assert _earlier(out, "other") is None  # another original: its truths and decisions do not carry over
    out.write_text(json.dumps({**records, "margin": 0.1}))
    assert _earlier(out, "abc") is None
    out.write_text(json.dumps({**records, "images_per_class": 100}))  # measured at another profile size
    assert _earlier(out, "abc") is None
    out.write_text("{")
    assert _earlier(out, "abc") is None


def test_the_truths_fgsm_is_the_gates_at_every_epsilon():
    """The truth computes FGSM with one gradient for all ε; the gate runs the package's FGSM once per ε."""
    import torch
    from torch import nn

    from labelflip_models.attacks import make_attack, run_attack
    from labelflip_models.gate.zoo import _fgsm_flips

    from .helpers import tiny_dataset

    torch.manual_seed(0)
    data = tiny_dataset(n_test=200)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).eval()
    epsilons = (0.02, 0.1, 0.3)
    flipped, correct = _fgsm_flips(model, data, epsilons, batch_size=64)
    images, labels = data.tensors("test")
    assert np.array_equal(correct, (model(images).argmax(1) == labels).numpy())
    for row, epsilon in zip(flipped, epsilons):
        result = run_attack(model, images, labels, make_attack("fgsm"), epsilon)
        expected = ((result.clean_pred != labels) | (result.adv_pred != labels)).numpy()
        assert np.array_equal(row, expected), epsilon
    assert flipped[0].sum() < flipped[-1].sum() <= len(labels)  # more flips at a larger ε: not a vacuous equality
