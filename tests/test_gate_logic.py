import json
import math

import numpy as np
import pytest

from labelflip_models.errors import BaselineError, ConfigError
from labelflip_models.gate import (BASELINE_SCHEMA, check_attack_success, check_flip_rate, load_baseline,
                                   write_baseline)
from labelflip_models.profiles import PROFILES, Case, cases, get_profile

NAMES = [str(c) for c in range(10)]
CASE = Case("quick", "mnist-5k", "linf-pgd", 0.1)


def fake_result(flips_per_class=10, n_per_class=100, success=(80, 90)):
    matrix = np.zeros((10, 10), dtype=int)
    for c in range(10):
        matrix[c, c] = n_per_class - flips_per_class
        matrix[c, (c + 1) % 10] = flips_per_class
    rate = {n: {"count": flips_per_class, "n": n_per_class} for n in NAMES}
    return {"class_names": NAMES, "flip_matrix": matrix.tolist(), "per_class_flip_rate": rate,
            "attack_success": {"count": success[0], "n": success[1]},
            "dataset": {"n": 10 * n_per_class}}


def test_identical_counts_pass_and_a_large_jump_fails():
    threshold = 0.17  # roughly the upper bound of 10/100
    assert check_flip_rate("0", 10, 100, threshold).passed
    assert check_flip_rate("0", 16, 100, threshold).passed  # noise-sized change: within the bounds
    failed = check_flip_rate("0", 40, 100, threshold)
    assert not failed.passed and "40/100" in failed.message and "0.170" in failed.message


def test_weaker_attack_fails_its_own_check():
    assert check_attack_success(80, 90, 0.78).passed
    assert not check_attack_success(20, 90, 0.78).passed


def test_baseline_round_trip_and_self_consistency(tmp_path):
    path = write_baseline(CASE, tmp_path, fake_result())
    assert path.name == "linf-pgd-eps0.1.json" and path.with_name("linf-pgd-eps0.1.csv").exists()
    baseline = load_baseline(CASE, tmp_path, NAMES, 1000)
    assert baseline["schema"] == BASELINE_SCHEMA
    # The gate applied to the very run that made the baseline passes for every class.
    for name in NAMES:
        assert check_flip_rate(name, 10, 100, baseline["thresholds"][name]).passed
        assert 0.1 < baseline["thresholds"][name] < 0.2
    assert check_attack_success(80, 90, baseline["min_success"]).passed


def _tamper(tmp_path, edit):
    path = write_baseline(CASE, tmp_path, fake_result())
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema="labelflip.baseline/0"), "schema"),
    (lambda d: d["gate"]["max_flip_rate"].pop("3"), "classes"),
    (lambda d: d["gate"]["max_flip_rate"].update({"3": math.nan}), r"max_flip_rate\['3'\]"),
    (lambda d: d["gate"]["max_flip_rate"].update({"3": 1.5}), "in \\[0, 1\\]"),
    (lambda d: d["gate"].pop("min_attack_success"), "malformed"),
    (lambda d: d["case"].update(epsilon=0.2), "baseline is for"),
    (lambda d: d["result"]["dataset"].update(n=500), "evaluated 500 images"),
    (lambda d: d["result"]["flip_matrix"][0].__setitem__(0, 89), "does not match"),
])
def test_bad_baselines_are_rejected_with_a_reason(tmp_path, edit, message):
    _tamper(tmp_path, edit)
    with pytest.raises(BaselineError, match=message):
        load_baseline(CASE, tmp_path, NAMES, 1000)


def test_missing_baseline_says_how_to_create_it(tmp_path):
    with pytest.raises(BaselineError, match="--labelflip-regen --labelflip-profile quick"):
        load_baseline(CASE, tmp_path, NAMES, 1000)


def test_profiles():
    smoke = cases(get_profile("smoke"))
    assert len(smoke) == len(set(c.id for c in smoke)) == 2 * 2 * 4
    assert get_profile("paper").epsilons == (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    assert set(PROFILES) >= {"smoke", "paper", "quick"}
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("nightly")
