"""How symmetric a flip matrix is: s = (|A_sym| - |A_anti|) / (|A_sym| + |A_anti|), in [0, 1] for counts.

The diagonal (images that stayed in their class) is zeroed first: it is symmetric by construction and
would otherwise swamp the flips. s = 1 when every a_ij equals a_ji; s = 0 (entrywise norm) when all flips
of each pair go one way.

Uncertainty:
- Bootstrap over examples: resampling the N images with replacement is drawing a multinomial(N, A/N)
  matrix (diagonal included, so the number of flips varies as it would). Resamples without any flip have
  no score and are left out. Sampling noise can only break pairs up, so resampled scores sit below the
  estimate (on a few hundred flips the plain percentile interval often excludes the estimate itself); the
  basic (reverse-percentile) interval [2s - q_hi, 2s - q_lo] corrects that bias once. It is clipped to
  [0, 1], the range of s for count matrices under both norms (|a_ij - a_ji| <= a_ij + a_ji entry by entry
  and column by column); se = sample std (ddof=1) of the resampled scores.
- Permutation test of "more symmetric than chance": the null keeps each row's off-diagonal counts (where a
  true class's flips go, as a multiset) and shuffles them over that row's off-diagonal positions, rows
  independently, which breaks only the alignment of a_ij with a_ji. p = (1 + #{s_perm >= s_obs}) / (1 + R),
  with a 1e-12 tolerance so rearrangements scoring exactly s_obs are not lost to rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .flip_matrix import check_matrix

NORMS = {
    "entrywise": "sum of |a_ij| over all entries",
    "induced": "induced matrix 1-norm: max over columns j of sum_i |a_ij|",
}
NULL = "each row's off-diagonal counts shuffled over that row's off-diagonal cells, rows independently"
TIE_TOLERANCE = 1e-12


def _norm(m: np.ndarray, norm: str) -> np.ndarray:
    """The norm of each matrix in a (..., K, K) stack."""
    if norm == "entrywise":
        return np.abs(m).sum(axis=(-2, -1))
    if norm == "induced":
        return np.abs(m).sum(axis=-2).max(axis=-1)
    raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")


def _scores(m: np.ndarray, norm: str) -> np.ndarray:
    """Scores of a (..., K, K) stack of off-diagonal matrices; NaN where a matrix has no flips."""
    mt = np.swapaxes(m, -1, -2)
    sym, anti = _norm((m + mt) / 2, norm), _norm((m - mt) / 2, norm)
    total = sym + anti
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (sym - anti) / total, np.nan)


def _off_diagonal(m: np.ndarray) -> np.ndarray:
    return m * (1 - np.eye(m.shape[-1], dtype=m.dtype))


def symmetry_score(matrix: np.ndarray, norm: str) -> float | None:
    s = float(_scores(_off_diagonal(check_matrix(matrix)), norm))
    return None if np.isnan(s) else s


def _permuted(off: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    k = off.shape[0]
    mask = ~np.eye(k, dtype=bool)
    rows = np.broadcast_to(off[mask].reshape(k, k - 1), (resamples, k, k - 1))
    out = np.zeros((resamples, k, k), dtype=off.dtype)
    out[:, mask] = rng.permuted(rows, axis=-1).reshape(resamples, -1)
    return out


def symmetry_analysis(matrix: np.ndarray, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    m = check_matrix(matrix)
    off = _off_diagonal(m)
    n = int(m.sum())
    boot = perm = None
    if off.sum() > 0:
        # Separate streams, so changing one procedure's resample count leaves the other's draws alone.
        boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        boot = _off_diagonal(boot_rng.multinomial(n, (m / n).ravel(), size=resamples).reshape(-1, *m.shape))
        perm = _permuted(off, resamples, perm_rng)
    out: dict[str, Any] = {"flips": int(off.sum())}
    for norm in NORMS:
        out[norm] = {"score": None, "ci": None, "se": None, "p_value": None}
        if boot is None:
            continue
        observed = float(_scores(off, norm))
        scores = _scores(boot, norm)
        scores = scores[~np.isnan(scores)]
        null = _scores(perm, norm)
        out[norm]["score"] = observed
        if len(scores):
            q_lo, q_hi = np.percentile(scores, [50 * (1 - confidence), 50 * (1 + confidence)])
            out[norm]["ci"] = [float(max(0.0, 2 * observed - q_hi)), float(min(1.0, 2 * observed - q_lo))]
        if len(scores) > 1:
            out[norm]["se"] = float(np.std(scores, ddof=1))
        out[norm]["p_value"] = float((1 + np.sum(null >= observed - TIE_TOLERANCE)) / (1 + resamples))
    return {**out, "norms": dict(NORMS), "confidence": confidence,
            "bootstrap": {"resamples": resamples, "seed": seed,
                          "unit": "examples (multinomial resampling of the flip-matrix counts)"},
            "permutation": {"resamples": resamples, "seed": seed, "null": NULL}}
