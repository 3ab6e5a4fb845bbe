"""Distribution of the smallest perturbation that flips an image, per class and per (true, landed) pair.

A failed minimal attack means the image could not be flipped within the attack's budget: its norm
counts as +inf, so it pulls medians and quartiles up instead of being silently dropped. Infinite
statistics are reported as None.

median_ci is the distribution-free order-statistic interval [x_(r), x_(n+1-r)] with r the
(1 - confidence)/2 quantile of Binomial(n, 1/2): coverage >= confidence for every continuous
distribution. Below n = 6 (at 95%) no such r >= 1 exists; the interval is then [min, max], whose
coverage 1 - 2^(1-n) is below nominal. Quartiles are numpy's linear percentiles, with +inf absorbing:
a quartile that interpolates towards an infinite value is infinite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binom

from ..errors import ConfigError


def median_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float] | None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    x = np.sort(np.asarray(values, dtype=float).ravel())
    if np.isnan(x).any():
        raise ValueError("median_ci: values must not be NaN")
    n = len(x)
    if n == 0:
        return None
    r = max(int(binom.ppf((1 - confidence) / 2, n, 0.5)), 1)
    return float(np.median(x)), float(x[r - 1]), float(x[n - r])


def _quartiles(x: np.ndarray) -> tuple[float, float]:
    """25th and 75th percentiles of sorted `x`, +inf-aware (numpy's lerp turns inf * 0 into NaN)."""
    finite = int(np.isfinite(x).sum())
    filled = np.where(np.isfinite(x), x, x[finite - 1] if finite else 0.0)
    q25, q75 = (np.percentile(filled, q) if q / 100 * (len(x) - 1) <= finite - 1 else np.inf for q in (25, 75))
    return float(q25), float(q75)


def _json(v: float) -> float | None:
    return v if np.isfinite(v) else None


def minimal_norm_summary(labels: np.ndarray, landed: np.ndarray, norms: np.ndarray, success: np.ndarray,
                         attacked: np.ndarray, class_names: Sequence[str],
                         confidence: float = 0.95) -> dict[str, Any]:
    labels, landed = np.asarray(labels, dtype=np.int64), np.asarray(landed, dtype=np.int64)
    norms = np.asarray(norms, dtype=float)
    success, attacked = np.asarray(success, dtype=bool), np.asarray(attacked, dtype=bool)
    if len({a.shape for a in (labels, landed, norms, success, attacked)}) != 1:
        raise ValueError("labels, landed, norms, success and attacked must have the same shape")
    k = len(class_names)
    if labels.size and (min(labels.min(), landed.min()) < 0 or max(labels.max(), landed.max()) >= k):
        raise ValueError(f"classes must lie in 0..{k - 1}")
    values = np.where(success, norms, np.inf)
    # Grouped by one sort, not by a mask over all images per class and per pair: K classes and up to N pairs.
    ranked = np.flatnonzero(attacked)
    ranked = ranked[np.lexsort((values[ranked], labels[ranked]))]  # by class, then by value
    sizes = np.bincount(labels[ranked], minlength=k)
    ends = np.cumsum(sizes)
    failed = np.bincount(labels[attacked & ~success], minlength=k)
    per_class = {}
    for c, name in enumerate(class_names):
        x = values[ranked[ends[c] - sizes[c]:ends[c]]]
        entry: dict[str, Any] = {"n": len(x), "failed": int(failed[c]),
                                 "median": None, "ci": None, "q25": None, "q75": None}
        if len(x):
            median, lo, hi = median_ci(x, confidence)
            q25, q75 = _quartiles(x)
            entry.update(median=_json(median), ci=[_json(lo), _json(hi)], q25=_json(q25), q75=_json(q75))
        per_class[name] = entry
    flipped = np.flatnonzero(attacked & success & (landed != labels))
    pairs = labels[flipped] * k + landed[flipped]
    order = np.argsort(pairs, kind="stable")
    keys, starts, counts = np.unique(pairs[order], return_index=True, return_counts=True)
    x = norms[flipped[order]]
    median, q25, q75 = (np.empty(len(keys)) for _ in range(3))
    for size in np.unique(counts):  # pairs with as many flips as each other, as the rows of one array
        group = np.flatnonzero(counts == size)
        rows = x[starts[group, None] + np.arange(size)]
        median[group] = np.median(rows, axis=1)
        q25[group], q75[group] = np.percentile(rows, [25, 75], axis=1)
    per_pair = {f"{class_names[t]} -> {class_names[to]}": {
        "true": class_names[t], "landed": class_names[to], "n": n, "median": md, "q25": lo, "q75": hi}
        for t, to, n, md, lo, hi in zip(*np.divmod(keys, k), counts.tolist(), median.tolist(), q25.tolist(),
                                        q75.tolist())}
    return {"per_class": per_class, "per_pair": per_pair}
