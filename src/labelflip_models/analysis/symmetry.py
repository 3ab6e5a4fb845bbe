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

Computation: matrices are handled as lists of cells, so the work grows with the nonzero cells, not with K^2
(with K = 1000 classes, 2000 resamples of the dense matrix would take 16 GB each). Each off-diagonal cell carries
the count at its transposed position. All the scores' sums are of half-integers, exact in any order, so the cells
give the dense definition's scores bit for bit. Resamples are drawn and scored in chunks of about CHUNK_CELLS
cells, which bounds memory.

Up to DENSE_MAX_CLASSES classes the draws are those the dense computation always made, so results stay as they
were; above it they are drawn from the same distributions in ways whose cost follows the nonzero cells:
- Bootstrap: up to DENSE_MAX_CLASSES the multinomial is drawn over the nonzero cells only, plus the last cell,
  which numpy's sampler fills with the remainder (numpy draws nothing for zero-probability cells, so the draws
  equal the dense ones). Above it the N images themselves are resampled: the same multinomial, without one
  binomial draw per cell.
- Permutation: up to DENSE_MAX_CLASSES each row's K-1 off-diagonal cells are shuffled. Above it only a row's
  nonzero counts are placed, each at a uniformly drawn off-diagonal position, drawing again where the position
  is taken. Nothing in that procedure depends on which position is which, so every placement is equally
  likely: the same null as a shuffle. Rows more than half full are shuffled whole, where drawing again would
  take long.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .flip_matrix import check_matrix, is_dense

NORMS = {
    "entrywise": "sum of |a_ij| over all entries",
    "induced": "induced matrix 1-norm: max over columns j of sum_i |a_ij|",
}
NULL = "each row's off-diagonal counts shuffled over that row's off-diagonal cells, rows independently"
TIE_TOLERANCE = 1e-12
CHUNK_CELLS = 2 ** 22  # cells per chunk of resamples: 32 MB per int64 array of a chunk


@dataclass(frozen=True)
class _Cells:
    """A stack of off-diagonal matrices as cells: counts (..., n) at (rows, cols), and rev, the count at each
    cell's transposed position (0 where no cell sits there); arrays broadcast to (..., n)."""

    counts: np.ndarray
    rev: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    k: int

    def _by_class(self, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Per matrix, the weights summed by class index: (..., k)."""
        index, weights = np.broadcast_arrays(index, weights)
        lead = weights.shape[:-1]
        size = int(np.prod(lead)) * self.k
        base = np.arange(0, size, self.k).reshape(*lead, 1)
        return np.bincount((base + index).ravel(), weights.ravel(), minlength=size).reshape(*lead, self.k)

    def scores(self) -> dict[str, np.ndarray]:
        """Each matrix's score under each norm; NaN where it has no flips.

        For counts |a_ij + a_ji| / 2 = (a_ij + a_ji) / 2 and |a_ij - a_ji| / 2 = (a_ij + a_ji) / 2 - min(a_ij, a_ji),
        so |A_sym| follows from row and column sums, and |A_anti| subtracts the flips matched the other way."""
        matched = np.minimum(self.counts, self.rev)
        flips = self.counts.sum(-1)
        sym_columns = (self._by_class(self.cols, self.counts) + self._by_class(self.rows, self.counts)) / 2
        anti_columns = sym_columns - self._by_class(self.cols, matched)
        norms = {"entrywise": (flips, flips - matched.sum(-1)),
                 "induced": (sym_columns.max(-1), anti_columns.max(-1))}
        out = {}
        for norm, (sym, anti) in norms.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                out[norm] = np.where(sym + anti > 0, (sym - anti) / (sym + anti), np.nan)
        return out


def _transposed(rows: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For cells listed in row-major order: the index of each cell's transposed cell, and whether it is listed."""
    keys, transposed = rows * k + cols, cols * k + rows
    at = np.minimum(np.searchsorted(keys, transposed), max(len(keys) - 1, 0))
    return at, keys[at] == transposed


def _static(counts: np.ndarray, rows: np.ndarray, cols: np.ndarray, k: int) -> _Cells:
    """Cells at fixed positions (row-major) whose counts (..., n) vary between matrices of the stack."""
    at, found = _transposed(rows, cols, k)
    return _Cells(counts, np.where(found, counts[..., at], 0), rows, cols, k)


def _off_cells(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(m)
    off = rows != cols
    return rows[off], cols[off]


def symmetry_score(matrix: np.ndarray, norm: str) -> float | None:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    m = check_matrix(matrix)
    rows, cols = _off_cells(m)
    s = float(_static(m[rows, cols], rows, cols, len(m)).scores()[norm])
    return None if np.isnan(s) else s


def _chunks(resamples: int, cells: int) -> Iterator[int]:
    """Resamples per chunk, so that a chunk holds about CHUNK_CELLS cells."""
    size = max(1, CHUNK_CELLS // max(cells, 1))
    for start in range(0, resamples, size):
        yield min(size, resamples - start)


def _bootstrap(m: np.ndarray, resamples: int, rng: np.random.Generator) -> Iterator[_Cells]:
    k, n = len(m), int(m.sum())
    rows, cols = np.nonzero(m)
    if is_dense(k):
        if (rows[-1], cols[-1]) != (k - 1, k - 1):  # numpy's sampler gives the last cell the remainder
            rows, cols = np.append(rows, k - 1), np.append(cols, k - 1)
        p = m[rows, cols] / n
        off = rows != cols
        for size in _chunks(resamples, len(rows)):
            yield _static(rng.multinomial(n, p, size=size)[:, off], rows[off], cols[off], k)
        return
    cell_of_image = np.repeat(np.arange(len(rows)), m[rows, cols])
    off = rows != cols
    for size in _chunks(resamples, n):
        picked = cell_of_image[rng.integers(0, n, (size, n), dtype=np.int32)]  # int32: twice as fast to draw
        draws = np.bincount((picked + len(rows) * np.arange(size)[:, None]).ravel(),
                            minlength=size * len(rows)).reshape(size, -1)
        yield _static(draws[:, off], rows[off], cols[off], k)


def _dense_null(m: np.ndarray, resamples: int, rng: np.random.Generator) -> Iterator[_Cells]:
    """Every row's K-1 off-diagonal cells shuffled, as numpy shuffles them whatever the chunks."""
    k = len(m)
    mask = ~np.eye(k, dtype=bool)
    rows, cols = np.nonzero(mask)
    for size in _chunks(resamples, k * (k - 1)):
        shuffled = rng.permuted(np.broadcast_to(m[mask].reshape(k, k - 1), (size, k, k - 1)), axis=-1)
        yield _static(shuffled.reshape(size, -1), rows, cols, k)


def _place(rows: np.ndarray, size: int, k: int, grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Columns (size, n) for cells in `rows`: per resample, distinct off-diagonal positions in each row, drawn
    uniformly; a cell that lands on a taken position, or loses it to another cell, draws again. `grid` (zeros,
    size * k * k) marks taken positions and is left marked."""
    n = len(rows)
    cell_rows = np.tile(rows, size)
    base = np.repeat(np.arange(size) * k, n) + cell_rows  # resample * k + row, per cell
    cols = np.empty(size * n, dtype=np.int64)
    todo = np.arange(size * n)
    while todo.size:
        col = rng.integers(0, k - 1, todo.size)
        col += col >= cell_rows[todo]  # skip the diagonal
        key = base[todo] * k + col
        free = grid[key] == 0
        todo, key, col, waiting = todo[free], key[free], col[free], todo[~free]
        grid[key] = todo + 1
        won = grid[key] == todo + 1
        cols[todo[won]] = col[won]
        todo = np.concatenate([waiting, todo[~won]])
    return cols.reshape(size, n)


def _sparse_null(m: np.ndarray, resamples: int, rng: np.random.Generator) -> Iterator[_Cells]:
    """Each row's nonzero off-diagonal counts at random distinct off-diagonal positions (rows more than half
    full: the whole row shuffled)."""
    k = len(m)
    rows, cols = _off_cells(m)
    counts = m[rows, cols]
    full = np.bincount(rows, minlength=k) > (k - 1) // 2
    sparse = ~full[rows]
    mask = ~np.eye(k, dtype=bool)
    whole = m[full][mask[full]].reshape(-1, k - 1)  # the full rows' off-diagonal cells
    full_rows = np.flatnonzero(full)
    # The full rows' counts, in each shuffle's position order: their number per row stays the same.
    full_cells = np.repeat(full_rows, (whole > 0).sum(1))
    cell_rows = np.concatenate([rows[sparse], full_cells])
    grid = np.zeros(max(1, CHUNK_CELLS // (k * k)) * k * k, dtype=np.int64)
    for size in _chunks(resamples, k * k):
        placed = _place(rows[sparse], size, k, grid, rng)
        shuffled = rng.permuted(np.broadcast_to(whole, (size, *whole.shape)), axis=-1)
        at, row, pos = np.nonzero(shuffled)
        full_cols = (pos + (pos >= full_rows[row])).reshape(size, -1)
        stack_cols = np.concatenate([placed, full_cols], axis=1)
        stack_counts = np.concatenate([np.broadcast_to(counts[sparse], placed.shape),
                                       shuffled[at, row, pos].reshape(size, -1)], axis=1)
        key = (np.arange(size)[:, None] * k + cell_rows) * k + stack_cols
        grid[key] = stack_counts  # over the marks _place left
        rev = grid[(np.arange(size)[:, None] * k + stack_cols) * k + cell_rows]
        grid[key] = 0
        yield _Cells(stack_counts, rev, cell_rows, stack_cols, k)


def _scored(chunks: Iterator[_Cells]) -> dict[str, np.ndarray]:
    """Every resample's score under each norm, chunk after chunk."""
    scores: dict[str, list[np.ndarray]] = {norm: [] for norm in NORMS}
    for cells in chunks:
        for norm, s in cells.scores().items():
            scores[norm].append(s)
    return {norm: np.concatenate(s) for norm, s in scores.items()}


def symmetry_analysis(matrix: np.ndarray, confidence: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    m = check_matrix(matrix)
    rows, cols = _off_cells(m)
    flips = int(m[rows, cols].sum())
    out: dict[str, Any] = {"flips": flips}
    for norm in NORMS:
        out[norm] = {"score": None, "ci": None, "se": None, "p_value": None}
    if flips:
        # Separate streams, so changing one procedure's resample count leaves the other's draws alone.
        boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        null = _dense_null if is_dense(len(m)) else _sparse_null
        observed = _static(m[rows, cols], rows, cols, len(m)).scores()
        boot = _scored(_bootstrap(m, resamples, boot_rng))
        perm = _scored(null(m, resamples, perm_rng))
        for norm in NORMS:
            score = float(observed[norm])
            scores = boot[norm][~np.isnan(boot[norm])]
            out[norm]["score"] = score
            if len(scores):
                q_lo, q_hi = np.percentile(scores, [50 * (1 - confidence), 50 * (1 + confidence)])
                out[norm]["ci"] = [float(max(0.0, 2 * score - q_hi)), float(min(1.0, 2 * score - q_lo))]
            if len(scores) > 1:
                out[norm]["se"] = float(np.std(scores, ddof=1))
            out[norm]["p_value"] = float((1 + np.sum(perm[norm] >= score - TIE_TOLERANCE)) / (1 + resamples))
    return {**out, "norms": dict(NORMS), "confidence": confidence,
            "bootstrap": {"resamples": resamples, "seed": seed,
                          "unit": "examples (multinomial resampling of the flip-matrix counts)"},
            "permutation": {"resamples": resamples, "seed": seed, "null": NULL}}
