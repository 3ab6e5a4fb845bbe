"""The gate's statistical decisions: each compares confidence bounds of a new run with a baseline's thresholds.

Decisions compare confidence bounds, never point estimates:
- a class regresses when the *lower* bound of its observed flip rate exceeds the baseline's threshold
  (the upper bound of the baseline rate), so attack noise cannot fail the gate; across the classes of a case,
  check_flip_rates holds that family to one error rate (Holm), so that many classes do not add up false alarms;
- an attack is broken when the *upper* bound of its observed success falls below the baseline's floor
  (the lower bound of the baseline success), because a weakened attack would hide regressions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import binom, binomtest
from scipy.stats import norm as scipy_norm

from ..analysis.min_norms import median_ci
from ..analysis.noise import compare_histograms
from ..analysis.stats import one_sided_wilson

SYMMETRY_NORMS = ("entrywise", "induced")
# A new run's bounds are one-sided 99%; the baselines' thresholds are 97.5% bounds (baselines.py).
GATE_CONFIDENCE = 0.99


@dataclass(frozen=True)
class Decision:
    passed: bool
    message: str
    # The numbers the decision compared, by name: what a test records as properties (JUnit XML carries them).
    figures: dict[str, float | int | str | None] = field(default_factory=dict)


def check_flip_rate(name: str, flips: int, n: int, max_rate: float) -> Decision:
    lower = float(one_sided_wilson(flips, n, GATE_CONFIDENCE, "lower"))
    text = (f"class {name!r}: {flips}/{n} flipped (rate {flips / n:.3f}, {GATE_CONFIDENCE:.0%} lower bound "
            f"{lower:.3f}) vs baseline threshold {max_rate:.3f}")
    return Decision(lower <= max_rate, text, {"flips": flips, "n": n, "rate": flips / n, "lower_bound": lower,
                                              "threshold": max_rate})


def flip_p_value(flips: np.ndarray | int, n: np.ndarray | int, threshold: np.ndarray | float) -> np.ndarray:
    """One-sided exact binomial p-value of H0: rate <= threshold for `flips` of `n` (elementwise): P(X >= flips)
    for X ~ Binomial(n, threshold).

    Exact rather than the Wilson score test's normal approximation (whose rejections at level 1 − c are exactly
    check_flip_rate's "lower bound exceeds the threshold"): Holm's levels at many classes are ~1e-5, and that far
    out a low rate's binomial tail is several times heavier than the normal one, which failed unchanged models of
    100-1,000 classes at rate 0.1 in 2-5% of runs (gate/characteristics.py's simulation). The exact test rejects at
    1 − c where the Clopper–Pearson lower bound exceeds the threshold. At the edges it is what the binomial gives:
    p = 1 for n = 0, for threshold >= 1 and for no flips; p = 0 for any flip against threshold 0.
    """
    return binom.sf(np.asarray(flips) - 1, n, np.clip(threshold, 0.0, 1.0))


class FamilyTest(NamedTuple):
    """family_test's verdicts; the classes of a case lie along the last axis of each array."""
    p_value: np.ndarray
    p_min: np.ndarray  # the p-value had every image of the class flipped
    gated: np.ndarray
    tarone_level: np.ndarray  # α/K (one per case): the level a class's p_min must beat to be gated
    holm_level: np.ndarray  # the level Holm compares the class's p-value with (NaN where not gated)
    regressed: np.ndarray


def family_test(flips: np.ndarray, ns: np.ndarray | int, thresholds: np.ndarray, alpha: float) -> FamilyTest:
    """The flip-rate decision over the classes of a case at family-wise error rate `alpha` (vectorised: leading
    axes are independent cases, e.g. a simulation's repetitions; check_flip_rates and gate/characteristics.py both
    decide here, so the gate and its simulated error rates cannot drift apart).

    Per class, the exact binomial test of H0: rate <= threshold (flip_p_value). Classes whose n is too small for
    even n/n flips to be significant are not gated (Tarone's argument for discrete tests): K is the smallest number
    such that at most K classes have p_min < α/K, and exactly those classes are gated. Which classes are gated
    depends only on the counts n and the baseline's thresholds, never on the flips being judged, so Holm's
    step-down at `alpha` across the gated classes still holds the family-wise error rate at `alpha`; the classes
    that could never fail no longer dilute the level of those that can. Holm: sort the gated p-values; the i-th
    smallest (of m) is compared with α/(m−i+1) and regresses when it and all smaller ones are below their levels.
    """
    k, n, t = np.broadcast_arrays(np.asarray(flips), np.asarray(ns), np.asarray(thresholds, dtype=float))
    classes = k.shape[-1]
    p = flip_p_value(k, n, t)
    p_min = flip_p_value(n, n, t)
    # Tarone: with q the sorted p_min (and +inf after the last), "at most K classes below α/K" is q[K] >= α/K
    # (0-based), true at the latest for K = classes; argmax finds the first K where it holds.
    q = np.concatenate([np.sort(p_min, axis=-1), np.full(k.shape[:-1] + (1,), np.inf)], axis=-1)
    candidates = np.arange(1, classes + 1)
    first = np.argmax(q[..., 1:] >= alpha / candidates, axis=-1) if classes else np.zeros(k.shape[:-1], dtype=int)
    tarone_level = alpha / (first + 1)
    gated = (n > 0) & (p_min < tarone_level[..., None])
    # Holm over the gated classes: the others sort last (p = inf) and get no level.
    order = np.argsort(np.where(gated, p, np.inf), axis=-1, kind="stable")
    m = gated.sum(axis=-1, keepdims=True)
    remaining = m - np.arange(classes)  # m − i + 1 for the i-th smallest (1-based i)
    level_sorted = np.where(remaining > 0, alpha / np.maximum(remaining, 1), np.nan)
    below = np.take_along_axis(p, order, axis=-1) < level_sorted  # NaN levels compare False
    holm_level, regressed = np.empty_like(level_sorted), np.empty_like(below)
    np.put_along_axis(holm_level, order, level_sorted, axis=-1)
    np.put_along_axis(regressed, order, np.logical_and.accumulate(below, axis=-1), axis=-1)
    return FamilyTest(p, p_min, gated, tarone_level, holm_level, regressed)


def check_flip_rates(names: list[str], flips: Sequence[int], ns: Sequence[int], thresholds: Sequence[float],
                     alpha: float = 1 - GATE_CONFIDENCE) -> dict[str, Decision]:
    """Per class of a case, whether its flip rate regressed, with the family-wise error rate of the case's classes
    held at `alpha` (family_test: exact binomial test per class, Holm across the gated classes). Classes not gated
    pass."""
    if not len(names) == len(flips) == len(ns) == len(thresholds):
        raise ValueError(f"one count, n and threshold per class: {len(names)} names, {len(flips)} counts, "
                         f"{len(ns)} ns, {len(thresholds)} thresholds")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    k, n = np.asarray(flips, dtype=int), np.asarray(ns, dtype=int)
    lower = one_sided_wilson(k, n, GATE_CONFIDENCE, "lower")  # also rejects counts outside 0 <= k <= n
    test = family_test(k, n, np.asarray(thresholds, dtype=float), alpha)
    decisions = {}
    for i, name in enumerate(names):
        ki, ni, t, p = int(k[i]), int(n[i]), float(thresholds[i]), float(test.p_value[i])
        gated, level = bool(test.gated[i]), float(test.holm_level[i])
        seen = f"class {name!r}: {ki}/{ni} flipped" + (f" (rate {ki / ni:.3f})" if ni else "")
        if not gated:
            why = ("no images" if ni == 0 else f"even {ni}/{ni} flipped could not be significant: "
                   f"p={test.p_min[i]:.2g} vs {float(test.tarone_level):.1e}")
            text = f"{seen}, not gated (n too small: {why}) against baseline threshold {t:.3f}"
        else:
            text = f"{seen}, binomial-test p={p:.2g} vs Holm level {level:.1e} against baseline threshold {t:.3f}"
            if p < level and not test.regressed[i]:
                text += " (not significant: Holm stopped at a smaller p-value above its level)"
        decisions[name] = Decision(not test.regressed[i], text, {
            "flips": ki, "n": ni, "rate": ki / ni if ni else None, "threshold": t, "p_value": p,
            "holm_level": level if gated else None, "gated": "yes" if gated else "no",
            "lower_bound": float(lower[i])})
    return decisions


def check_attack_success(succeeded: int, attacked: int, min_success: float) -> Decision:
    upper = float(one_sided_wilson(succeeded, attacked, GATE_CONFIDENCE, "upper"))
    text = (f"attack succeeded on {succeeded}/{attacked} correctly classified images ({GATE_CONFIDENCE:.0%} upper "
            f"bound {upper:.3f}) vs baseline floor {min_success:.3f}")
    return Decision(upper >= min_success, text, {"succeeded": succeeded, "attacked": attacked,
                                                  "upper_bound": upper, "floor": min_success})


def check_symmetry(norm: str, now: dict[str, float | None], base: dict[str, float | None]) -> Decision:
    """Two-sample z-test on the score difference, each run's standard error from its own bootstrap."""
    if now["score"] is None or base["score"] is None:
        return Decision(now["score"] is None and base["score"] is None,
                        f"{norm} symmetry score {now['score']} vs baseline {base['score']} (None: no flips)")
    z = float(scipy_norm.ppf(0.5 + GATE_CONFIDENCE / 2))
    allowed = z * math.hypot(now["se"], base["se"])
    diff = now["score"] - base["score"]
    return Decision(abs(diff) <= allowed,
                    f"{norm} symmetry score {now['score']:.3f} vs baseline {base['score']:.3f}: difference "
                    f"{diff:+.3f}, allowed ±{allowed:.3f} ({GATE_CONFIDENCE:.0%}, bootstrap standard errors "
                    f"{now['se']:.3f} and {base['se']:.3f})")


def check_catch_all(shares: dict[str, dict[str, Any]], flips: int, base: dict[str, Any]) -> Decision:
    """A baseline catch-all class must not fall clearly below the threshold, nor a ruled-out one rise clearly above."""
    threshold = base["threshold"]
    problems = []
    for name, share in shares.items():
        lower = float(one_sided_wilson(share["count"], flips, GATE_CONFIDENCE, "lower"))
        upper = float(one_sided_wilson(share["count"], flips, GATE_CONFIDENCE, "upper"))
        if name in base["classes"] and upper < threshold:
            problems.append(f"{name!r} no longer absorbs flips ({share['count']}/{flips}, upper bound {upper:.3f})")
        if name in base["ruled_out"] and lower > threshold:
            problems.append(f"{name!r} became a catch-all ({share['count']}/{flips}, lower bound {lower:.3f})")
    text = (f"catch-all threshold {threshold:.3f} of all flips; baseline catch-alls {base['classes']}; "
            + ("; ".join(problems) if problems else "no class crossed it clearly"))
    return Decision(not problems, text, {"flips": flips, "threshold": threshold})


def check_dominant_targets(matrix: np.ndarray, class_names: list[str], base: dict[str, str]) -> Decision:
    """Where the baseline's dominant target was strong, no other target may now clearly beat it (binomial test)."""
    index = {n: i for i, n in enumerate(class_names)}
    problems = []
    for name, target in base.items():
        row, t = matrix[index[name]], index[target]
        # Only the targets that now outnumber it (most cells of a many-class row are zero).
        for j in np.flatnonzero(row > row[t]):
            count = row[j]
            if j == index[name]:
                continue
            p = binomtest(int(count), int(count + row[t]), 0.5, alternative="greater").pvalue
            if p < 1 - GATE_CONFIDENCE:
                problems.append(f"{name!r} now flips to {class_names[j]!r} ({count}) over {target!r} ({row[t]}), "
                                f"p={p:.2g}")
    return Decision(not problems, "; ".join(problems) or f"{len(base)} strong dominant targets unchanged")


def check_min_norm(name: str, norms: np.ndarray, floor: float, confidence: float = GATE_CONFIDENCE) -> Decision:
    """A class regresses when even the upper bound of its median minimal norm lies below the baseline's floor."""
    ci = median_ci(norms, 2 * confidence - 1)
    if ci is None:
        return Decision(False, f"class {name!r}: no attacked images")
    median, _, upper = ci
    return Decision(upper >= floor, f"class {name!r}: median minimal norm {median:.4g} ({100 * confidence:.6g}% upper "
                                    f"bound {upper:.4g}) vs baseline floor {floor:.4g}",
                    {"median": median, "upper_bound": upper, "floor": floor})


def check_min_norms(norms: dict[str, np.ndarray], floors: dict[str, float | None],
                    alpha: float = 1 - GATE_CONFIDENCE) -> dict[str, Decision]:
    """check_min_norm for every class with a floor, each at level alpha/m (Bonferroni over the m classes gated), so
    that a case's minimal-norm checks together fail an unchanged model with probability at most alpha."""
    gated = [n for n in norms if floors.get(n) is not None]
    return {n: check_min_norm(n, norms[n], floors[n], 1 - alpha / len(gated)) for n in gated}


def _top(counts: list[int], class_names: list[str]) -> str:
    return ", ".join(f"{class_names[i]} {counts[i]}" for i in np.argsort(counts, kind="stable")[::-1][:3])


def check_noise(counts: list[int], base_counts: list[int], class_names: list[str]) -> Decision:
    test = compare_histograms(np.array(base_counts), np.array(counts))
    return Decision(test["p_value"] >= 1 - GATE_CONFIDENCE,
                    f"white-noise histogram (top: {_top(counts, class_names)}) vs baseline (top: "
                    f"{_top(base_counts, class_names)}): "
                    f"{test['test']} p={test['p_value']:.3g}", {"p_value": test["p_value"]})
