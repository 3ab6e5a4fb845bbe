"""Where flips go: each class's dominant target, significant class pairs, catch-all columns, and the most
frequent flips and most flipped classes.

Shares are proportions of flips with two-sided Wilson intervals at `confidence`.
- dominant_targets: the off-diagonal argmax of each row (ties go to the lowest class index);
  the runner-up is the next largest cell (None when it holds no flips). "Strong" means an
  exact one-sided binomial test rejects count ~ Binomial(count + runner_up_count, 1/2) in favour of the
  dominant target at level alpha.
- pair_relations: a true class's flips spread evenly would give each other class the chance share
  1/(K-1). A pair is "symmetric" when both directions' lower bounds exceed chance, "one-way" a -> b when
  a -> b's lower bound exceeds chance and b -> a's upper bound stays below it; other pairs are omitted.
  Symmetric pairs are oriented in class order. Only pairs with a flip in some direction can pass (a lower
  bound above 0 needs a count above 0), so only those are tested: the work follows the flips, not K^2.
- catch_all: a column's share of all flips; a catch-all class's lower bound exceeds factor/K.
- top_pairs: the TOP_N most frequent flips (true -> landed), with the share of the true class's images that
  land there; worst_classes: the TOP_N classes with the highest flip rate. Both rank ties in class order, and
  are what a report lists where K is too large to list every class or pair (K > TOP_N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binom

from ..errors import ConfigError
from .flip_matrix import check_matrix, class_flips
from .stats import rates, wilson_interval

TOP_N = 20  # pairs and classes listed one by one; above this many classes, reports list only the top TOP_N


def _checked(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    m = check_matrix(matrix)
    if len(class_names) != len(m):
        raise ConfigError(f"{len(class_names)} class names for a {len(m)}x{len(m)} flip matrix")
    return m


def _off(m: np.ndarray) -> np.ndarray:
    return m * (1 - np.eye(len(m), dtype=m.dtype))


def _shares(k: np.ndarray, n: np.ndarray, confidence: float) -> list[dict[str, Any]]:
    """Each k[i] / n[i] with its interval; share and ci None where n[i] = 0."""
    return [{"share": r["rate"], "ci": r["ci"] if r["n"] else None} for r in rates(k, n, confidence)]


def dominant_targets(matrix: np.ndarray, class_names: Sequence[str], alpha: float = 0.01,
                     confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    off = _off(_checked(matrix, class_names))
    flips = off.sum(1)
    ranked = off.astype(float)
    np.fill_diagonal(ranked, -1)  # never the target nor the runner-up (with K = 2 it is "second" and counts 0)
    first, second = np.argsort(-ranked, axis=1, kind="stable")[:, :2].T  # stable: ties go to the lower index
    rows = np.arange(len(off))
    count, runner = off[rows, first], off[rows, second]
    # binomtest's one-sided p-value, for every class at once: P(X >= count), X ~ Binomial(count + runner, 1/2).
    with np.errstate(invalid="ignore"):  # classes without flips: no test, their p-value is not used
        p = np.minimum(1.0, binom.sf(count - 1, count + runner, 0.5))
    out = {}
    for i, (name, share) in enumerate(zip(class_names, _shares(count, flips, confidence))):
        if flips[i] == 0:
            out[name] = {"target": None, "count": 0, "flips": 0, "share": None, "ci": None,
                         "runner_up": None, "runner_up_count": 0, "p_value": None, "strong": False}
            continue
        out[name] = {"target": class_names[first[i]], "count": int(count[i]), "flips": int(flips[i]), **share,
                     "runner_up": class_names[second[i]] if runner[i] else None, "runner_up_count": int(runner[i]),
                     "p_value": float(p[i]), "strong": bool(p[i] < alpha)}
    return out


def pair_relations(matrix: np.ndarray, class_names: Sequence[str],
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    off = _off(_checked(matrix, class_names))
    k = len(off)
    chance = 1 / (k - 1)
    flips = off.sum(1)
    i, j = np.nonzero(off)
    a, b = np.divmod(np.unique(np.minimum(i, j) * k + np.maximum(i, j)), k)  # each pair once, in class order
    ab, ba = off[a, b], off[b, a]
    lo_ab, hi_ab = wilson_interval(ab, flips[a], confidence)  # n = 0 gives [0, 1]: never significant
    lo_ba, hi_ba = wilson_interval(ba, flips[b], confidence)
    symmetric = (lo_ab > chance) & (lo_ba > chance)
    forward = ~symmetric & (lo_ab > chance) & (hi_ba < chance)
    backward = ~symmetric & ~forward & (lo_ba > chance) & (hi_ab < chance)
    keep = symmetric | forward | backward
    a, b, ab, ba = (np.where(backward, y, x)[keep] for x, y in ((a, b), (b, a), (ab, ba), (ba, ab)))
    kinds = np.where(symmetric, "symmetric", "one-way")[keep]
    pairs = [{"a": class_names[x], "b": class_names[y], "a_to_b": int(xy), "b_to_a": int(yx),
              "share_a_to_b": s_xy, "share_b_to_a": s_yx, "kind": str(kind)}
             for x, y, xy, yx, s_xy, s_yx, kind in zip(a, b, ab, ba, _shares(ab, flips[a], confidence),
                                                       _shares(ba, flips[b], confidence), kinds)]
    return sorted(pairs, key=lambda p: -(p["a_to_b"] + p["b_to_a"]))  # stable: ties keep class order


def catch_all(matrix: np.ndarray, class_names: Sequence[str], confidence: float = 0.95,
              factor: float = 2.0) -> dict[str, Any]:
    if not factor > 0:
        raise ConfigError(f"factor must be positive, got {factor}")
    off = _off(_checked(matrix, class_names))
    threshold = factor / len(off)
    flips = int(off.sum())
    landed = off.sum(0)
    lo, _ = wilson_interval(landed, flips, confidence)
    return {"threshold": threshold, "flips": flips,
            "shares": {name: {"count": int(c), **share}
                       for name, c, share in zip(class_names, landed, _shares(landed, np.full(len(off), flips),
                                                                               confidence))},
            "classes": [name for name, low in zip(class_names, lo) if flips and low > threshold]}


def top_pairs(matrix: np.ndarray, class_names: Sequence[str], confidence: float = 0.95,
              n: int = TOP_N) -> list[dict[str, Any]]:
    """The n largest off-diagonal cells, largest first: {true, landed, count, n (the true class's images), rate,
    ci}."""
    m = _checked(matrix, class_names)
    off = _off(m)
    true, landed = np.nonzero(off)  # row by row: the stable sort below ranks ties in class order
    top = np.argsort(-off[true, landed], kind="stable")[:n]
    true, landed = true[top], landed[top]
    return [{"true": class_names[t], "landed": class_names[to], **r}
            for t, to, r in zip(true, landed, rates(off[true, landed], m.sum(1)[true], confidence))]


def worst_classes(matrix: np.ndarray, class_names: Sequence[str], confidence: float = 0.95,
                  n: int = TOP_N) -> list[dict[str, Any]]:
    """The n classes with the highest flip rate, highest first: {class, count (flips), n (images), rate, ci}.
    Classes without images have no rate and are left out."""
    flips, images = class_flips(_checked(matrix, class_names))
    rate = flips / np.maximum(images, 1)
    order = np.argsort(-rate, kind="stable")
    order = order[images[order] > 0][:n]
    return [{"class": class_names[c], **r} for c, r in zip(order, rates(flips[order], images[order], confidence))]
