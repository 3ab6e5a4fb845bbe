"""The gate's statistical decisions. Only a loss of robustness larger than a practical margin fails, and only when
the test is confident of it; everything else a run may do differently is drift, reported and not failed.

Failing decisions, each one-sided in the direction "less robust" and each with its margin (Margins):
- a class's flip rate rose by more than `rate` (its robust accuracy fell by as much): per class, paired per image
  where the run attacked the baseline's images (Tango's score test on the newly and no-longer flipped images),
  else against the baseline's upper bound plus the margin (exact binomial test); Holm across the case's classes;
- the case's overall flip rate rose by more than `rate` (a diffuse loss no single class shows);
- a class's minimal norms shrank by more than `norm` (relative): paired sign test, else the baseline's lower bound
  of the median lowered by the margin; Bonferroni across the case's classes;
- the attack succeeds on clearly fewer images than in the baseline, by more than `rate`: a weaker attack would hide
  regressions.
Drift (check_symmetry, check_catch_all, check_dominant_targets, check_noise): where flips go and where noise
lands are fingerprints of the weights, which every retrain changes.
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
from .margins import NORM_MARGIN, RATE_MARGIN

SYMMETRY_NORMS = ("entrywise", "induced")
# A new run's bounds are one-sided 99%; the baselines' thresholds are 97.5% bounds, wider (baselines.py).
GATE_CONFIDENCE = 0.99
BASELINE_CONFIDENCE = 0.975
ALPHA = 1 - GATE_CONFIDENCE


@dataclass(frozen=True)
class Decision:
    passed: bool
    message: str
    # The numbers the decision compared, by name: what a test records as properties (JUnit XML carries them).
    figures: dict[str, float | int | str | None] = field(default_factory=dict)


def plain(value: object) -> object:
    """A numpy scalar as its Python value (JSON and xdist take those), anything else as it is."""
    return value.item() if hasattr(value, "item") else value


def decision_record(decision: Decision) -> dict[str, Any]:
    """The decision as plain JSON values: passed, message, figures."""
    return {"passed": bool(decision.passed), "message": decision.message,
            "figures": {k: plain(v) for k, v in decision.figures.items()}}


@dataclass(frozen=True)
class Pairs:
    """Per class of a case, how the images both runs attacked moved between the baseline and the run."""

    newly: np.ndarray  # flipped now, not in the baseline
    no_longer: np.ndarray  # flipped in the baseline, not now
    n: np.ndarray  # images of the class both runs attacked


def flip_p_value(flips: np.ndarray | int, n: np.ndarray | int, threshold: np.ndarray | float) -> np.ndarray:
    """One-sided exact binomial p-value of H0: rate <= threshold for `flips` of `n` (elementwise): P(X >= flips)
    for X ~ Binomial(n, threshold).

    Exact rather than the Wilson score test's normal approximation: Holm's levels at many classes are ~1e-5, and
    that far out a low rate's binomial tail is several times heavier than the normal one, which failed unchanged
    models of 100-1,000 classes at rate 0.1 in 2-5% of runs (gate/characteristics.py's simulation). The exact test
    rejects at 1 − c where the Clopper–Pearson lower bound exceeds the threshold. At the edges it is what the
    binomial gives: p = 1 for n = 0, for threshold >= 1 and for no flips; p = 0 for any flip against threshold 0.
    """
    return binom.sf(np.asarray(flips) - 1, n, np.clip(threshold, 0.0, 1.0))


def paired_p_value(newly: np.ndarray | int, no_longer: np.ndarray | int, n: np.ndarray | int,
                   margin: float) -> np.ndarray:
    """One-sided p-value of H0: the flip rate rose by at most `margin`, from paired outcomes (elementwise): of `n`
    images attacked in both runs, `newly` flipped only now and `no_longer` only in the baseline.

    Tango's (1998) score test for a difference of paired proportions, θ = (newly − no_longer) / n, against
    H0: θ <= margin: z = (b − c − nδ) / sqrt(n(2·p̂ + δ(1 − δ))), with p̂ the restricted maximum-likelihood
    estimate of P(no longer flipped) under θ = δ. At δ = 0 it is McNemar's z = (b − c)/sqrt(b + c). Its level at the
    gate's sizes is measured by simulation (gate/characteristics.py). p = 1 where n = 0 or nothing moved beyond δ.
    """
    b, c, n = (np.asarray(v, dtype=float) for v in np.broadcast_arrays(newly, no_longer, n))
    d = float(margin)
    a = 2 * np.maximum(n, 1)
    bb = -b - c + (2 * n - b + c) * d
    cc = -c * d * (1 - d)
    p21 = (np.sqrt(np.maximum(bb * bb - 4 * a * cc, 0)) - bb) / (2 * a)
    var = n * (2 * p21 + d * (1 - d))
    excess = b - c - n * d
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, excess / np.sqrt(np.where(var > 0, var, 1)), np.where(excess > 0, np.inf, -np.inf))
    return np.where((n > 0) & (excess > 0), scipy_norm.sf(z), 1.0)


class FamilyTest(NamedTuple):
    """family_test's verdicts; the classes of a case lie along the last axis of each array."""
    p_value: np.ndarray
    p_min: np.ndarray  # the p-value had every image of the class flipped
    gated: np.ndarray
    tarone_level: np.ndarray  # α/K (one per case): the level a class's p_min must beat to be gated
    holm_level: np.ndarray  # the level Holm compares the class's p-value with (NaN where not gated)
    regressed: np.ndarray


def holm_tarone(p: np.ndarray, p_min: np.ndarray, alpha: float) -> FamilyTest:
    """Holm's step-down at family-wise error rate `alpha` over the classes (last axis) that could fail at all
    (vectorised: leading axes are independent cases, e.g. a simulation's repetitions).

    Classes whose smallest possible p-value `p_min` (every image flipped) cannot be significant are not gated
    (Tarone's argument for discrete tests): K is the smallest number such that at most K classes have p_min < α/K,
    and exactly those classes are gated. Which classes are gated depends only on the counts n and the baseline,
    never on the flips being judged, so Holm across the gated classes still holds the family-wise error rate at
    `alpha`; the classes that could never fail no longer dilute the level of those that can. Holm: sort the gated
    p-values; the i-th smallest (of m) is compared with α/(m−i+1) and regresses when it and all smaller ones are
    below their levels.
    """
    p, p_min = np.broadcast_arrays(np.asarray(p, dtype=float), np.asarray(p_min, dtype=float))
    classes = p.shape[-1]
    # Tarone: with q the sorted p_min (and +inf after the last), "at most K classes below α/K" is q[K] >= α/K
    # (0-based), true at the latest for K = classes; argmax finds the first K where it holds.
    q = np.concatenate([np.sort(p_min, axis=-1), np.full(p.shape[:-1] + (1,), np.inf)], axis=-1)
    candidates = np.arange(1, classes + 1)
    first = np.argmax(q[..., 1:] >= alpha / candidates, axis=-1) if classes else np.zeros(p.shape[:-1], dtype=int)
    tarone_level = alpha / (first + 1)
    gated = p_min < tarone_level[..., None]
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


def family_test(flips: np.ndarray, ns: np.ndarray | int, thresholds: np.ndarray, alpha: float,
                margin: float = 0.0) -> FamilyTest:
    """The unpaired flip-rate decision over the classes of a case: per class the exact binomial test of H0: rate <=
    threshold + margin (flip_p_value), Holm and Tarone across them (holm_tarone). check_flip_rates and
    gate/characteristics.py both decide here, so the gate and its simulated error rates cannot drift apart."""
    k, n, t = np.broadcast_arrays(np.asarray(flips), np.asarray(ns), np.asarray(thresholds, dtype=float))
    limit = np.clip(t + margin, 0.0, 1.0)
    p_min = np.where(n > 0, flip_p_value(n, n, limit), 1.0)
    return holm_tarone(flip_p_value(k, n, limit), p_min, alpha)


def paired_family_test(pairs: Pairs, base_flips: np.ndarray, alpha: float, margin: float) -> FamilyTest:
    """The paired flip-rate decision over the classes of a case (paired_p_value per class, Holm and Tarone across
    them); a class's smallest possible p-value is that of every image the baseline kept flipping now."""
    p = paired_p_value(pairs.newly, pairs.no_longer, pairs.n, margin)
    p_min = paired_p_value(pairs.n - base_flips, 0, pairs.n, margin)
    return holm_tarone(p, p_min, alpha)


def check_flip_rates(names: list[str], flips: Sequence[int], ns: Sequence[int], thresholds: Sequence[float],
                     baseline_rates: Sequence[float], margin: float = RATE_MARGIN, alpha: float = ALPHA,
                     pairs: Pairs | None = None, base_flips: Sequence[int] | None = None) -> dict[str, Decision]:
    """Per class of a case, whether its flip rate rose by more than `margin`, with the family-wise error rate of the
    case's classes held at `alpha`. Paired (`pairs`, with the baseline's flips of the paired images `base_flips`)
    where the run attacked the baseline's images, else unpaired against the baseline's `thresholds` (upper bounds
    of its rates) plus the margin. Classes not gated pass."""
    if not len(names) == len(flips) == len(ns) == len(thresholds) == len(baseline_rates):
        raise ValueError(f"one count, n, threshold and baseline rate per class: {len(names)} names, {len(flips)} "
                         f"counts, {len(ns)} ns, {len(thresholds)} thresholds, {len(baseline_rates)} rates")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    k, n = np.asarray(flips, dtype=int), np.asarray(ns, dtype=int)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"counts must satisfy 0 <= k <= n, got k={k.tolist()}, n={n.tolist()}")
    if pairs is None:
        test = family_test(k, n, np.asarray(thresholds, dtype=float), alpha, margin)
    else:
        test = paired_family_test(pairs, np.asarray(base_flips, dtype=int), alpha, margin)
    decisions = {}
    for i, name in enumerate(names):
        ki, ni, t, base = int(k[i]), int(n[i]), float(thresholds[i]), float(baseline_rates[i])
        p, gated, level = float(test.p_value[i]), bool(test.gated[i]), float(test.holm_level[i])
        rate = ki / ni if ni else None
        if pairs is None:
            rise = None if rate is None else rate - base
            how = f"unpaired: baseline rate {base:.3f}, bound {t:.3f}"
        else:
            b, c, m = int(pairs.newly[i]), int(pairs.no_longer[i]), int(pairs.n[i])
            rise = (b - c) / m if m else None
            how = f"paired: {b} newly flipped, {c} no longer, of {m}; baseline rate {base:.3f}"
        seen = f"class {name!r}: {ki}/{ni} flipped"
        if ni:
            seen += f" (rate {rate:.3f}" + (f", rise {rise:+.3f}" if rise is not None else "") + ")"
        if not gated:
            why = "no images" if ni == 0 else f"p={test.p_min[i]:.2g} at best vs {float(test.tarone_level):.1e}"
            text = f"{seen}, not gated (n too small: {why}); {how}"
        else:
            verdict = "rose by more than" if test.regressed[i] else "no significant rise above"
            text = f"{seen} {verdict} the margin {margin:.2f}: p={p:.2g} vs Holm level {level:.1e} ({how})"
            if p < level and not test.regressed[i]:
                text += " (not significant: Holm stopped at a smaller p-value above its level)"
        decisions[name] = Decision(not test.regressed[i], text, {
            "flips": ki, "n": ni, "rate": rate, "baseline_rate": base, "rise": rise, "margin": margin,
            "threshold": t, "p_value": p, "holm_level": level if gated else None, "gated": "yes" if gated else "no",
            "paired": "yes" if pairs is not None else "no"})
    return decisions


def check_overall_flip_rate(flips: int, n: int, baseline_flips: int, baseline_n: int, margin: float = RATE_MARGIN,
                            alpha: float = ALPHA, pairs: tuple[int, int, int] | None = None) -> Decision:
    """Whether the case's flip rate over all its images (1 − robust accuracy) rose by more than `margin`: paired
    (`pairs`: newly, no longer, n) where possible, else the exact binomial test against the baseline's upper bound
    plus the margin."""
    base = baseline_flips / baseline_n if baseline_n else 0.0
    if pairs is None:
        bound = float(one_sided_wilson(baseline_flips, baseline_n, BASELINE_CONFIDENCE, "upper"))
        p = float(flip_p_value(flips, n, min(bound + margin, 1.0)))
        how = f"unpaired: baseline {baseline_flips}/{baseline_n}, bound {bound:.3f}"
        rise = flips / n - base if n else 0.0
    else:
        b, c, m = pairs
        p = float(paired_p_value(b, c, m, margin))
        how = f"paired: {b} newly flipped, {c} no longer, of {m}; baseline {baseline_flips}/{baseline_n}"
        rise = (b - c) / m if m else 0.0
    regressed = p < alpha
    text = (f"robust accuracy {1 - flips / n:.3f} vs baseline {1 - base:.3f} (flip rate rise {rise:+.3f}): "
            f"{'fell by more than' if regressed else 'no significant fall beyond'} the margin {margin:.2f}, "
            f"p={p:.2g} vs {alpha:g} ({how})")
    return Decision(not regressed, text, {"flips": flips, "n": n, "rise": rise, "margin": margin, "p_value": p,
                                          "paired": "yes" if pairs is not None else "no"})


def check_attack_success(succeeded: int, attacked: int, min_success: float, margin: float = RATE_MARGIN) -> Decision:
    """The attack got weaker (which would hide regressions) when even the upper bound of its success now lies more
    than `margin` below the baseline's floor (the lower bound of the baseline's success)."""
    upper = float(one_sided_wilson(succeeded, attacked, GATE_CONFIDENCE, "upper"))
    floor = max(min_success - margin, 0.0)
    text = (f"attack succeeded on {succeeded}/{attacked} correctly classified images ({GATE_CONFIDENCE:.0%} upper "
            f"bound {upper:.3f}) vs baseline floor {min_success:.3f} less the margin {margin:.2f}")
    return Decision(upper >= floor, text, {"succeeded": succeeded, "attacked": attacked, "upper_bound": upper,
                                           "floor": min_success, "margin": margin})


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
    """A baseline catch-all class must not fall clearly below the threshold, nor a ruled-out one rise clearly above
    (it newly became a catch-all: named in the figures)."""
    threshold = base["threshold"]
    problems, became = [], []
    for name, share in shares.items():
        lower = float(one_sided_wilson(share["count"], flips, GATE_CONFIDENCE, "lower"))
        upper = float(one_sided_wilson(share["count"], flips, GATE_CONFIDENCE, "upper"))
        if name in base["classes"] and upper < threshold:
            problems.append(f"{name!r} no longer absorbs flips ({share['count']}/{flips}, upper bound {upper:.3f})")
        if name in base["ruled_out"] and lower > threshold:
            became.append(name)
            problems.append(f"{name!r} became a catch-all ({share['count']}/{flips}, lower bound {lower:.3f})")
    text = (f"catch-all threshold {threshold:.3f} of all flips; baseline catch-alls {base['classes']}; "
            + ("; ".join(problems) if problems else "no class crossed it clearly"))
    return Decision(not problems, text, {"flips": flips, "threshold": threshold,
                                         "new_catch_all": ", ".join(became) or None})


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


def check_min_norm(name: str, norms: np.ndarray, floor: float, margin: float = NORM_MARGIN,
                   confidence: float = GATE_CONFIDENCE) -> Decision:
    """Unpaired: a class's minimal norms shrank when even the upper bound of their median lies below the baseline's
    floor (the lower bound of its median) lowered by the relative `margin`."""
    ci = median_ci(norms, 2 * confidence - 1)
    if ci is None:
        return Decision(False, f"class {name!r}: no attacked images")
    median, _, upper = ci
    limit = floor * (1 - margin)
    return Decision(upper >= limit, f"class {name!r}: median minimal norm {median:.4g} ({100 * confidence:.6g}% "
                                    f"upper bound {upper:.4g}) vs baseline floor {floor:.4g} less {margin:.0%} "
                                    f"(unpaired)", {"median": median, "upper_bound": upper, "floor": floor,
                                                    "margin": margin, "paired": "no"})


def check_paired_min_norm(name: str, now: np.ndarray, base: np.ndarray, margin: float = NORM_MARGIN,
                          confidence: float = GATE_CONFIDENCE) -> Decision:
    """Paired: the same images' minimal norms now (`now`) and in the baseline (`base`; inf: the attack failed). The
    class's norms shrank by more than the relative `margin` when significantly more than half of its images now
    need less than (1 − margin) times their baseline norm (exact one-sided sign test of H0: the median ratio of new
    to baseline norm is at least 1 − margin). An image the attack fails on in both runs shrinks by nothing."""
    now, base = np.asarray(now, dtype=float), np.asarray(base, dtype=float)
    shrunk = int(np.sum(now < (1 - margin) * base))
    n = len(now)
    p = float(binom.sf(shrunk - 1, n, 0.5)) if n else 1.0
    ratio = float(np.median(now / base)) if n and np.isfinite(base).all() and np.isfinite(now).all() else None
    told = f", median ratio {ratio:.3f}" if ratio is not None else ""
    return Decision(p >= 1 - confidence, f"class {name!r}: {shrunk} of {n} images need less than {1 - margin:.0%} "
                                         f"of their baseline norm{told}: sign-test p={p:.2g} vs "
                                         f"{1 - confidence:.2g} (paired)",
                    {"shrunk": shrunk, "n": n, "median_ratio": ratio, "p_value": p, "margin": margin, "paired": "yes"})


def check_min_norms(norms: dict[str, np.ndarray], floors: dict[str, float | None], margin: float = NORM_MARGIN,
                    alpha: float = ALPHA, base_norms: dict[str, np.ndarray] | None = None) -> dict[str, Decision]:
    """Per class, whether its minimal norms shrank by more than `margin`, each class at level alpha/m (Bonferroni
    over the m classes checked), so that a case's minimal-norm checks together fail an unchanged model with
    probability at most alpha. Paired (`base_norms`: the baseline's norms of the same images, class by class)
    where the run attacked the baseline's images: every class with images; else unpaired against `floors`."""
    if base_norms is not None:
        checked = [n for n in norms if len(norms[n])]
        return {n: check_paired_min_norm(n, norms[n], base_norms[n], margin, 1 - alpha / len(checked))
                for n in checked}
    gated = [n for n in norms if floors.get(n) is not None]
    return {n: check_min_norm(n, norms[n], floors[n], margin, 1 - alpha / len(gated)) for n in gated}


def _top(counts: list[int], class_names: list[str]) -> str:
    return ", ".join(f"{class_names[i]} {counts[i]}" for i in np.argsort(counts, kind="stable")[::-1][:3])


def check_noise(counts: list[int], base_counts: list[int], class_names: list[str]) -> Decision:
    test = compare_histograms(np.array(base_counts), np.array(counts))
    return Decision(test["p_value"] >= 1 - GATE_CONFIDENCE,
                    f"white-noise histogram (top: {_top(counts, class_names)}) vs baseline (top: "
                    f"{_top(base_counts, class_names)}): "
                    f"{test['test']} p={test['p_value']:.3g}", {"p_value": test["p_value"]})
