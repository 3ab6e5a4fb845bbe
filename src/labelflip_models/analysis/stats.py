"""Confidence intervals on counts: the Wilson score interval every rate and share in labelflip carries."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm


def wilson_interval(k: np.ndarray | int, n: np.ndarray | int, confidence: float = 0.95,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilson score interval for k successes in n trials (n = 0 gives [0, 1])."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"counts must satisfy 0 <= k <= n, got k={k}, n={n}")
    z = norm.ppf(0.5 + confidence / 2)
    safe_n = np.maximum(n, 1)
    p = k / safe_n
    centre = (p + z * z / (2 * safe_n)) / (1 + z * z / safe_n)
    half = z * np.sqrt(p * (1 - p) / safe_n + z * z / (4 * safe_n ** 2)) / (1 + z * z / safe_n)
    # Exact at the ends (rounding would otherwise leave e.g. upper(10/10) = 0.9999999999999999 < k/n).
    lo = np.where(k <= 0, 0.0, np.minimum(np.clip(centre - half, 0, 1), p))
    hi = np.where(k >= n, 1.0, np.maximum(np.clip(centre + half, 0, 1), p))
    return np.where(n > 0, lo, 0.0), np.where(n > 0, hi, 1.0)


def one_sided_wilson(k: np.ndarray | int, n: np.ndarray | int, confidence: float, side: str) -> np.ndarray:
    """Lower or upper one-sided Wilson bound: the two-sided interval at 2·confidence − 1."""
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be 'lower' or 'upper', not {side!r}")
    lo, hi = wilson_interval(k, n, 2 * confidence - 1)
    return lo if side == "lower" else hi


def rates(k: np.ndarray | list[int], n: np.ndarray | list[int], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Each k[i] of n[i] as {count, n, rate (None when n = 0), ci}: the form of every rate in result.json."""
    k, n = np.asarray(k, dtype=np.int64), np.asarray(n, dtype=np.int64)
    lo, hi = wilson_interval(k, n, confidence)
    return [{"count": a, "n": b, "rate": a / b if b else None, "ci": [lo_, hi_]}
            for a, b, lo_, hi_ in zip(k.tolist(), n.tolist(), lo.tolist(), hi.tolist())]
