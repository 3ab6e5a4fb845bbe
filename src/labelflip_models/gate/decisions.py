"""The gate's statistical decisions: each compares confidence bounds of a new run with a baseline's thresholds.

Decisions compare confidence bounds, never point estimates:
- a class regresses when the *lower* bound of its observed flip rate exceeds the baseline's threshold
  (the upper bound of the baseline rate), so attack noise cannot fail the gate;
- an attack is broken when the *upper* bound of its observed success falls below the baseline's floor
  (the lower bound of the baseline success), because a weakened attack would hide regressions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest
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
        for j, count in enumerate(row):
            if j in (index[name], t) or count <= row[t]:
                continue
            p = binomtest(int(count), int(count + row[t]), 0.5, alternative="greater").pvalue
            if p < 1 - GATE_CONFIDENCE:
                problems.append(f"{name!r} now flips to {class_names[j]!r} ({count}) over {target!r} ({row[t]}), "
                                f"p={p:.2g}")
    return Decision(not problems, "; ".join(problems) or f"{len(base)} strong dominant targets unchanged")


def check_min_norm(name: str, norms: np.ndarray, floor: float) -> Decision:
    """A class regresses when even the upper bound of its median minimal norm lies below the baseline's floor."""
    ci = median_ci(norms, 2 * GATE_CONFIDENCE - 1)
    if ci is None:
        return Decision(False, f"class {name!r}: no attacked images")
    median, _, upper = ci
    return Decision(upper >= floor, f"class {name!r}: median minimal norm {median:.4g} ({GATE_CONFIDENCE:.0%} upper "
                                    f"bound {upper:.4g}) vs baseline floor {floor:.4g}",
                    {"median": median, "upper_bound": upper, "floor": floor})


def _top(counts: list[int], class_names: list[str]) -> str:
    return ", ".join(f"{class_names[i]} {counts[i]}" for i in np.argsort(counts, kind="stable")[::-1][:3])


def check_noise(counts: list[int], base_counts: list[int], class_names: list[str]) -> Decision:
    test = compare_histograms(np.array(base_counts), np.array(counts))
    return Decision(test["p_value"] >= 1 - GATE_CONFIDENCE,
                    f"white-noise histogram (top: {_top(counts, class_names)}) vs baseline (top: "
                    f"{_top(base_counts, class_names)}): "
                    f"{test['test']} p={test['p_value']:.3g}", {"p_value": test["p_value"]})
