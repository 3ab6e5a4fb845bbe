"""Flip matrices (row = true class, column = class the adversarial example lands in) and their statistics."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import norm

from .atomic import atomic_write_text
from .errors import DataError

CORNER = "true \\ adversarial"


def flip_matrix(true: np.ndarray, landed: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: every image exactly once, at (its true class, the class it lands in)."""
    true, landed = np.asarray(true, dtype=np.int64), np.asarray(landed, dtype=np.int64)
    if true.shape != landed.shape:
        raise ValueError(f"true {true.shape} and landed {landed.shape} differ in shape")
    for name, arr in (("true", true), ("landed", landed)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} classes must lie in 0..{num_classes - 1}")
    return np.bincount(true * num_classes + landed, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_flips(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per true class: (images that left their class, images of that class)."""
    totals = matrix.sum(1)
    return totals - np.diag(matrix), totals


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


def to_csv(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix {matrix.shape} does not fit {len(class_names)} class names")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([CORNER, *class_names])
    for name, row in zip(class_names, matrix):
        writer.writerow([name, *(int(v) for v in row)])
    return buf.getvalue()


def write_csv(path: Path, matrix: np.ndarray, class_names: Sequence[str]) -> None:
    atomic_write_text(path, to_csv(matrix, class_names))


def read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """Inverse of `write_csv`; rejects anything that is not a square matrix of non-negative integers."""
    try:
        rows = list(csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read flip matrix {path}: {exc}") from None
    if not rows or len(rows[0]) < 2:
        raise DataError(f"{path}: empty flip matrix")
    names = rows[0][1:]
    body = rows[1:]
    if len(body) != len(names) or any(len(r) != len(names) + 1 for r in body):
        raise DataError(f"{path}: flip matrix must have one row per class and {len(names) + 1} columns")
    if [r[0] for r in body] != names:
        raise DataError(f"{path}: row names {[r[0] for r in body]} differ from the header {names}")
    try:
        matrix = np.array([[int(v) for v in r[1:]] for r in body], dtype=np.int64)
    except ValueError:
        raise DataError(f"{path}: flip matrix entries must be integers") from None
    if (matrix < 0).any():
        raise DataError(f"{path}: flip matrix entries must be non-negative")
    return matrix, names
