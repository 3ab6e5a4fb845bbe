"""Where flips go: each class's dominant target, significant class pairs, and catch-all columns.

Shares are proportions of flips with two-sided Wilson intervals at `confidence`.
- dominant_targets: the off-diagonal argmax of each row (ties go to the lowest class index);
  the runner-up is the next largest cell (None when it holds no flips). "Strong" means an
  exact one-sided binomial test rejects count ~ Binomial(count + runner_up_count, 1/2) in favour of the
  dominant target at level alpha.
- pair_relations: a true class's flips spread evenly would give each other class the chance share
  1/(K-1). A pair is "symmetric" when both directions' lower bounds exceed chance, "one-way" a -> b when
  a -> b's lower bound exceeds chance and b -> a's upper bound stays below it; other pairs are omitted.
  Symmetric pairs are oriented in class order.
- catch_all: a column's share of all flips; a catch-all class's lower bound exceeds factor/K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ..errors import ConfigError
from .flip_matrix import check_matrix
from .stats import wilson_interval


def _checked(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    m = check_matrix(matrix)
    if len(class_names) != len(m):
        raise ConfigError(f"{len(class_names)} class names for a {len(m)}x{len(m)} flip matrix")
    return m * (1 - np.eye(len(m), dtype=m.dtype))


def _share(k: int, n: int, confidence: float) -> dict[str, Any]:
    if n == 0:
        return {"share": None, "ci": None}
    lo, hi = wilson_interval(k, n, confidence)
    return {"share": k / n, "ci": [float(lo), float(hi)]}


def dominant_targets(matrix: np.ndarray, class_names: Sequence[str], alpha: float = 0.01,
                     confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    off = _checked(matrix, class_names)
    out = {}
    for i, name in enumerate(class_names):
        flips = int(off[i].sum())
        if flips == 0:
            out[name] = {"target": None, "count": 0, "flips": 0, "share": None, "ci": None,
                         "runner_up": None, "runner_up_count": 0, "p_value": None, "strong": False}
            continue
        row = off[i].astype(float)
        row[i] = -1  # never the target nor the runner-up (with K = 2 it is "second" and counts 0)
        first, second = np.argsort(-row, kind="stable")[:2]  # stable: ties go to the lower index
        count, runner = int(off[i, first]), int(off[i, second])
        p = binomtest(count, count + runner, 0.5, alternative="greater").pvalue
        out[name] = {"target": class_names[first], "count": count, "flips": flips,
                     **_share(count, flips, confidence),
                     "runner_up": class_names[second] if runner else None, "runner_up_count": runner,
                     "p_value": float(p), "strong": bool(p < alpha)}
    return out


def pair_relations(matrix: np.ndarray, class_names: Sequence[str],
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    off = _checked(matrix, class_names)
    k = len(off)
    chance = 1 / (k - 1)
    flips = off.sum(1)
    lo, hi = wilson_interval(off, flips[:, None], confidence)  # n = 0 gives [0, 1]: never significant
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            if lo[i, j] > chance and lo[j, i] > chance:
                a, b, kind = i, j, "symmetric"
            elif lo[i, j] > chance and hi[j, i] < chance:
                a, b, kind = i, j, "one-way"
            elif lo[j, i] > chance and hi[i, j] < chance:
                a, b, kind = j, i, "one-way"
            else:
                continue
            pairs.append({"a": class_names[a], "b": class_names[b],
                          "a_to_b": int(off[a, b]), "b_to_a": int(off[b, a]),
                          "share_a_to_b": _share(int(off[a, b]), int(flips[a]), confidence),
                          "share_b_to_a": _share(int(off[b, a]), int(flips[b]), confidence),
                          "kind": kind})
    return sorted(pairs, key=lambda p: -(p["a_to_b"] + p["b_to_a"]))  # stable: ties keep class order


def catch_all(matrix: np.ndarray, class_names: Sequence[str], confidence: float = 0.95,
              factor: float = 2.0) -> dict[str, Any]:
    if not factor > 0:
        raise ConfigError(f"factor must be positive, got {factor}")
    off = _checked(matrix, class_names)
    threshold = factor / len(off)
    flips = int(off.sum())
    landed = off.sum(0)
    lo, _ = wilson_interval(landed, flips, confidence)
    return {"threshold": threshold, "flips": flips,
            "shares": {name: {"count": int(c), **_share(int(c), flips, confidence)}
                       for name, c in zip(class_names, landed)},
            "classes": [name for name, low in zip(class_names, lo) if flips and low > threshold]}
