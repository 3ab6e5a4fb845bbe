"""Flip matrices (row = true class, column = class the adversarial example lands in) and their CSV layout."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..storage.atomic import atomic_write_text

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


def check_matrix(matrix: np.ndarray) -> np.ndarray:
    """A square matrix of non-negative integer counts, as int64."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise DataError(f"a flip matrix must be square with at least 2 classes, got shape {m.shape}")
    if m.size and (not np.all(np.isfinite(m)) or np.any(m < 0) or np.any(m != np.round(m))):
        raise DataError("flip matrix entries must be non-negative integers")
    return m.astype(np.int64)


def class_flips(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per true class: (images that left their class, images of that class)."""
    totals = matrix.sum(1)
    return totals - np.diag(matrix), totals


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
