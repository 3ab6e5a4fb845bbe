import json
import math

import numpy as np
import pytest

from labelflip_models.errors import BaselineError, ConfigError
from labelflip_models.gate.baselines import (
    BASELINE_SCHEMA,
    IMAGES,
    ImageOutcomes,
    load_baseline,
    load_noise_baseline,
    make_baseline,
    write_baseline,
    write_noise_baseline,
)
from labelflip_models.gate.decisions import (
    check_attack_success,
    check_catch_all,
    check_dominant_targets,
    check_flip_rates,
    check_min_norm,
    check_noise,
    check_overall_flip_rate,
    check_paired_min_norm,
    check_symmetry,
)
from labelflip_models.gate.pairing import pair
from labelflip_models.gate.profiles import FGSM_SMOKE, PROFILES, Case, cases, get_profile
from labelflip_models.runs.results import analyse

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
            "flip_fraction": {"count": 10 * flips_per_class, "n": 10 * n_per_class},
            "dataset": {"n": 10 * n_per_class, "fingerprint": "f"}, "attack": {"name": "linf-pgd", "seed": 0},
            "analysis": analyse(matrix, NAMES, seed=0)}


def fake_outcomes(flips_per_class=10, n_per_class=100, norms=None):
    """Per image, what fake_result counts: of each class's images the first `flips_per_class` land in the next
    class; `norms` (minimal attacks): each image's minimal norm."""
    label = np.repeat(np.arange(10), n_per_class)
    flipped = np.tile(np.arange(n_per_class) < flips_per_class, 10)
    landed = np.where(flipped, (label + 1) % 10, label)
    return ImageOutcomes(np.arange(len(label)), label, landed, None if norms is None else np.asarray(norms, float))


def _decide(flips_now, n=100, base_flips=10, margin=0.05, pairs=None):
    names = ["0", "1"]
    return check_flip_rates(names, [flips_now, base_flips], [n, n], [0.17, 0.17], [base_flips / n] * 2, margin,
                            pairs=pairs, base_flips=None if pairs is None else [base_flips, base_flips])["0"]


def test_unpaired_flip_rate_fails_only_a_rise_beyond_the_margin():
    assert _decide(10).passed and _decide(0).passed  # unchanged, or more robust
    assert _decide(25).passed  # a rise that does not clearly exceed the bound plus the margin
    failed = _decide(45)
    assert not failed.passed and "45/100" in failed.message and "rise +0.350" in failed.message
    assert "unpaired" in failed.message and failed.figures["rise"] == pytest.approx(0.35)
    # Without a margin the same rise of the bound fails sooner.
    assert _decide(32, margin=0.05).passed and not _decide(32, margin=0.0).passed


def test_paired_flip_rate_sees_a_rise_the_unpaired_test_cannot():
    from labelflip_models.gate.decisions import Pairs

    # 18 images newly flipped, none the other way: +0.18 over a 0.05 margin, clear when paired.
    pairs = Pairs(np.array([18, 0]), np.array([0, 0]), np.array([100, 100]))
    paired = _decide(28, pairs=pairs)
    assert not paired.passed and "paired: 18 newly flipped, 0 no longer" in paired.message
    assert _decide(28).passed  # the same counts unpaired
    # The same net rise from churn (many images moving both ways) is not significant.
    churn = Pairs(np.array([40, 0]), np.array([22, 0]), np.array([100, 100]))
    assert _decide(28, pairs=churn).passed


def test_overall_robust_accuracy_falls_paired_and_unpaired():
    assert check_overall_flip_rate(100, 1000, 100, 1000).passed
    unpaired = check_overall_flip_rate(250, 1000, 100, 1000)
    assert not unpaired.passed and "unpaired" in unpaired.message
    assert check_overall_flip_rate(140, 1000, 100, 1000).passed  # +0.04: within the margin
    assert not check_overall_flip_rate(190, 1000, 100, 1000, pairs=(95, 5, 1000)).passed  # +0.09, paired


def test_weaker_attack_fails_its_own_check():
    assert check_attack_success(80, 90, 0.78).passed
    assert not check_attack_success(20, 90, 0.78).passed
    assert check_attack_success(57, 90, 0.78).passed  # within the margin
    assert not check_attack_success(57, 90, 0.78, margin=0.0).passed


def test_baseline_round_trip_and_self_consistency(tmp_path):
    path = write_baseline(CASE, tmp_path, fake_result(), fake_outcomes())
    assert path.name == "linf-pgd-eps0.1.json" and path.with_name("linf-pgd-eps0.1.csv").exists()
    assert path.with_name("linf-pgd-eps0.1" + IMAGES).read_text().startswith("index,label,landed,norm\n0,0,1,\n")
    baseline = load_baseline(CASE, tmp_path, NAMES, 1000)
    assert baseline["schema"] == BASELINE_SCHEMA
    # The gate applied to the very run that made the baseline passes for every class, paired.
    paired, how = pair(fake_outcomes(), fake_result(), baseline)
    assert how == "paired image by image" and paired.overall == (0, 0, 1000)
    decisions = check_flip_rates(NAMES, [10] * 10, [100] * 10, [baseline["thresholds"][n] for n in NAMES],
                                 [0.1] * 10, pairs=paired.pairs, base_flips=paired.base_flips)
    assert all(d.passed for d in decisions.values())
    assert all(0.1 < baseline["thresholds"][name] < 0.2 for name in NAMES)
    assert check_attack_success(80, 90, baseline["min_success"]).passed


@pytest.mark.parametrize(("change", "reason"), [
    (lambda r, o: r["dataset"].update(fingerprint="g"), "test data differ"),
    (lambda r, o: r["attack"].update(steps=5), "attack settings differ from the baseline's: steps"),
    (lambda r, o: o.index.__setitem__(0, 5000), "other images"),
])
def test_a_run_pairs_only_with_the_same_images_and_settings(tmp_path, change, reason):
    write_baseline(CASE, tmp_path, fake_result(), fake_outcomes())
    baseline = load_baseline(CASE, tmp_path, NAMES, 1000)
    result, outcomes = fake_result(), fake_outcomes()
    result["attack"].update(engine="other", batch_size=7, seed=3)  # these do not matter
    assert pair(outcomes, result, baseline)[1] == "paired image by image (other attack seed than the baseline's)"
    change(result, outcomes)
    paired, how = pair(outcomes, result, baseline)
    assert paired is None and how.startswith("unpaired") and reason in how
    # A baseline without per-image outcomes gates unpaired and says how to get them.
    write_baseline(CASE, tmp_path, fake_result())
    assert "regenerate it" in pair(outcomes, fake_result(), load_baseline(CASE, tmp_path, NAMES, 1000))[1]


def _tamper(tmp_path, edit):
    path = write_baseline(CASE, tmp_path, fake_result(), fake_outcomes())
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema="labelflip.baseline/0"), "schema"),
    (lambda d: d["gate"]["max_flip_rate"].pop("3"), "classes"),
    (lambda d: d["gate"]["max_flip_rate"].update({"3": math.nan}), r"max_flip_rate\['3'\]"),
    (lambda d: d["gate"]["max_flip_rate"].update({"3": 1.5}), "in \\[0, 1\\]"),
    (lambda d: d["gate"].pop("min_attack_success"), "malformed"),
    (lambda d: d["gate"]["symmetry"].pop("induced"), "malformed"),
    (lambda d: d["gate"]["catch_all"].pop("ruled_out"), "malformed"),
    (lambda d: d["case"].update(epsilon=0.2), "baseline is for"),
    (lambda d: d["result"]["dataset"].update(n=500), "evaluated 500 images"),
    (lambda d: d["result"]["flip_matrix"][0].__setitem__(0, 89), "does not match"),
    (lambda d: d["images"].update(sha256="0"), "does not match linf-pgd-eps0.1.json \\(sha256\\)"),
    (lambda d: d["images"].update(file="gone.csv"), "per-image outcomes cannot be read"),
    (lambda d: d.pop("images") and d.update(schema="labelflip.baseline/2"), None),  # an unpaired baseline loads
])
def test_bad_baselines_are_rejected_with_a_reason(tmp_path, edit, message):
    _tamper(tmp_path, edit)
    if message is None:
        assert load_baseline(CASE, tmp_path, NAMES, 1000)["outcomes"] is None
        return
    with pytest.raises(BaselineError, match=message):
        load_baseline(CASE, tmp_path, NAMES, 1000)


def test_outcomes_that_do_not_add_up_to_the_flip_matrix_are_rejected(tmp_path):
    path = write_baseline(CASE, tmp_path, fake_result(), fake_outcomes())
    images = path.with_name("linf-pgd-eps0.1" + IMAGES)
    text = images.read_text().replace("\n0,0,1,\n", "\n0,0,0,\n", 1)
    images.write_text(text)
    data = json.loads(path.read_text())
    data["images"]["sha256"] = __import__("hashlib").sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="does not add up to the flip matrix"):
        load_baseline(CASE, tmp_path, NAMES, 1000)


def test_missing_baseline_says_how_to_create_it(tmp_path):
    with pytest.raises(BaselineError, match="--labelflip-regen --labelflip-profile quick"):
        load_baseline(CASE, tmp_path, NAMES, 1000)


def test_profiles():
    smoke = cases(get_profile("smoke"))
    assert len(smoke) == len(set(c.id for c in smoke)) == 2 * (2 * 4 + 1 + 4 + 3)
    assert {c.id for c in smoke} >= {"mnist-5k-l2-cw-min", "fashion-mnist-linf-pgd-eps0.2", "mnist-5k-l1-bb-min",
                                   "mnist-5k-linf-autoattack-eps0.2", "fashion-mnist-l2-autoattack-eps1"}
    paper = get_profile("paper")
    assert paper.spec("linf-pgd").epsilons == (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    assert paper.spec("l2-cw").params == ()  # the paper profile keeps Foolbox's defaults
    assert paper.images_per_class("l0-bb") == 100 and paper.images_per_class("l0-bb", uncapped=True) is None
    smoke_profile = get_profile("smoke")
    # An attack's own size overrides the profile's, above it as well as below; uncapped lifts only the smaller.
    assert smoke_profile.images_per_class("fgsm") == FGSM_SMOKE > smoke_profile.per_class
    assert smoke_profile.images_per_class("fgsm", uncapped=True) == FGSM_SMOKE
    assert smoke_profile.images_per_class("linf-pgd") == 50
    assert smoke_profile.images_per_class("linf-pgd", uncapped=True) == smoke_profile.per_class
    assert set(PROFILES) >= {"smoke", "paper", "quick"}
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("nightly")


# --------------------------------------------------------------------------------------------------
# The flip-structure checks: symmetry, catch-all classes, dominant targets, minimal norms, white noise
# --------------------------------------------------------------------------------------------------

def test_symmetry_check_allows_noise_and_catches_a_real_shift():
    base = {"score": 0.60, "se": 0.04}
    assert check_symmetry("entrywise", {"score": 0.60, "se": 0.04}, base).passed
    assert check_symmetry("entrywise", {"score": 0.50, "se": 0.04}, base).passed  # < 2.58 * 0.057
    failed = check_symmetry("induced", {"score": 0.30, "se": 0.04}, base)
    assert not failed.passed and "induced" in failed.message and "-0.300" in failed.message
    assert check_symmetry("entrywise", {"score": None, "se": None}, {"score": None, "se": None}).passed
    assert not check_symmetry("entrywise", {"score": None, "se": None}, base).passed


def catch_all_matrix(column, share, flips=500, k=10):
    """Off-diagonal flips: `share` of them land in `column`, the rest spread evenly."""
    matrix = np.zeros((k, k), dtype=int)
    rest = flips - int(share * flips)
    for i in range(k):
        if i != column:
            matrix[i, column] = int(share * flips) // (k - 1)
        for j in range(k):
            if j not in (i, column):
                matrix[i, j] = rest // (k * (k - 2))
    return matrix


def test_catch_all_check_has_hysteresis():
    base_result = fake_result()
    base_result["analysis"] = analyse(catch_all_matrix(6, 0.6), NAMES, seed=0)
    gate = make_baseline(CASE, base_result)[0]["gate"]["catch_all"]
    assert gate["classes"] == ["6"] and "0" in gate["ruled_out"] and "6" not in gate["ruled_out"]
    same = analyse(catch_all_matrix(6, 0.55), NAMES, seed=0)["catch_all"]
    assert check_catch_all(same["shares"], same["flips"], gate).passed
    moved = analyse(catch_all_matrix(3, 0.6), NAMES, seed=0)["catch_all"]
    decision = check_catch_all(moved["shares"], moved["flips"], gate)
    assert not decision.passed and "'6' no longer absorbs" in decision.message and "'3' became" in decision.message
    assert decision.figures["new_catch_all"] == "3"


def test_dominant_target_check_only_fails_on_a_clear_change():
    matrix = np.zeros((10, 10), dtype=int)
    matrix[5, 7], matrix[5, 9] = 80, 20
    base = {"5": "7"}
    assert check_dominant_targets(matrix, NAMES, base).passed
    matrix[5, 9] = 95  # 95 vs 80: not significant
    assert check_dominant_targets(matrix, NAMES, base).passed
    matrix[5, 9] = 160
    decision = check_dominant_targets(matrix, NAMES, base)
    assert not decision.passed and "'5' now flips to '9' (160) over '7' (80)" in decision.message


MINIMAL = Case("quick", "mnist-5k", "l2-deepfool", None)


def test_min_norm_check():
    rng = np.random.default_rng(0)
    base = rng.exponential(1.0, 1000)
    floor = make_baseline(MINIMAL, fake_result(), fake_outcomes(norms=base))[0]["gate"]["min_norm_floor"]["0"]
    assert 0 < floor < np.median(base[:100])
    assert check_min_norm("0", rng.exponential(1.0, 60), floor).passed
    easier = check_min_norm("0", rng.exponential(0.2, 60), floor)
    assert not easier.passed and "easier" not in easier.message and "floor" in easier.message
    # Failed attacks (inf) make a class look harder to flip, never easier.
    assert check_min_norm("0", np.full(60, np.inf), floor).passed
    # 15% smaller everywhere: beyond a 10% margin, within a 20% one.
    shrunk = rng.exponential(1.0, 100)
    assert not check_paired_min_norm("0", 0.85 * shrunk, shrunk).passed
    assert check_paired_min_norm("0", 0.85 * shrunk, shrunk, margin=0.2).passed
    assert check_paired_min_norm("0", shrunk, shrunk).passed
    assert check_paired_min_norm("0", np.full(100, np.inf), shrunk).passed  # the attack fails now: not easier


def test_noise_baseline_round_trip_and_check(tmp_path):
    noise = {"class_names": NAMES, "counts": [0, 0, 0, 0, 0, 0, 0, 0, 900, 100], "n": 1000,
             "model": {"sha256": "x"}}
    path = write_noise_baseline(tmp_path / "quick" / "mnist-5k" / "white-noise.json", noise, "quick")
    baseline = load_noise_baseline(path, NAMES, 1000, "quick")
    assert check_noise([0, 0, 0, 0, 0, 0, 0, 0, 890, 110], baseline["result"]["counts"], NAMES).passed
    moved = check_noise([0, 0, 0, 0, 0, 0, 0, 0, 500, 500], baseline["result"]["counts"], NAMES)
    assert not moved.passed and "top: 8 900, 9 100" in moved.message
    with pytest.raises(BaselineError, match="classified 1000 noise images, this run 2000"):
        load_noise_baseline(path, NAMES, 2000, "quick")
    path.write_text("{")
    with pytest.raises(BaselineError, match="unreadable white-noise baseline"):
        load_noise_baseline(path, NAMES, 1000, "quick")
    # The hint names the baseline folder, which is not the reference models' default.
    with pytest.raises(BaselineError, match=f"--labelflip-regen --labelflip-profile quick --labelflip-baselines "
                                            f"{tmp_path} -k white_noise"):
        load_noise_baseline(tmp_path / "quick" / "fashion-mnist" / "white-noise.json", NAMES, 1000, "quick")


def test_minimal_baseline_needs_its_norm_floors(tmp_path):
    case = MINIMAL
    with pytest.raises(ValueError, match="needs each image's minimal norm"):
        write_baseline(case, tmp_path, fake_result(), fake_outcomes())
    path = write_baseline(case, tmp_path, fake_result(), fake_outcomes(norms=np.tile(np.linspace(0.1, 1.0, 100), 10)))
    assert path.name == "l2-deepfool-min.json"
    baseline = load_baseline(case, tmp_path, NAMES, 1000)
    assert set(baseline["gate"]["min_norm_floor"]) == set(NAMES)
    data = json.loads(path.read_text())
    data["gate"].pop("min_norm_floor")
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"missing gate\.min_norm_floor"):
        load_baseline(case, tmp_path, NAMES, 1000)
