"""Flip matrices (row = true class, column = class the adversarial example lands in), their CSV layouts and their
form in result.json.

Up to DENSE_MAX_CLASSES classes a matrix is stored dense: the paper's CSV (`flip_matrix.csv`, a header row of class
names under the CORNER cell, one row per true class) and a K x K nested list in JSON. Above it, where a dense matrix
is mostly zeros and grows with K^2, it is stored as its cells: `flip_pairs.csv` (`true,landed,count`, every class's
diagonal cell, even when 0, so the CSV names every class in order, then every nonzero cell, row by row) and a COO
object in JSON ({"format": "coo", "shape": [K, K], "rows", "cols", "counts"}, nonzero cells only).
`matrix_from_json` reads either JSON form, `read_csv` either CSV layout.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..storage.atomic import atomic_write_text

CORNER = "true \\ adversarial"
DENSE_MAX_CLASSES = 100
PAIRS_HEADER = ["true", "landed", "count"]
DENSE_CSV, PAIRS_CSV = "flip_matrix.csv", "flip_pairs.csv"


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


def to_pairs_csv(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """`true,landed,count` rows, row by row: every nonzero cell, and each class's diagonal cell even when 0."""
    m = np.asarray(matrix)
    if m.shape != (len(class_names), len(class_names)):
        raise ValueError(f"matrix {m.shape} does not fit {len(class_names)} class names")
    rows, cols = np.nonzero((m != 0) | np.eye(len(m), dtype=bool))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PAIRS_HEADER)
    writer.writerows(zip((class_names[i] for i in rows), (class_names[j] for j in cols), m[rows, cols].tolist()))
    return buf.getvalue()


def is_dense(num_classes: int) -> bool:
    return num_classes <= DENSE_MAX_CLASSES


def csv_name(num_classes: int) -> str:
    """The file a run's flip matrix goes to: DENSE_CSV, or PAIRS_CSV above DENSE_MAX_CLASSES."""
    return DENSE_CSV if is_dense(num_classes) else PAIRS_CSV


def matrix_csv(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The matrix in the CSV layout its size calls for (see the module docstring)."""
    return (to_csv if is_dense(len(class_names)) else to_pairs_csv)(matrix, class_names)


def write_csv(path: Path, matrix: np.ndarray, class_names: Sequence[str]) -> None:
    atomic_write_text(path, to_csv(matrix, class_names))


def matrix_to_json(matrix: np.ndarray) -> list[list[int]] | dict[str, Any]:
    """result.json's form of the matrix: a nested list up to DENSE_MAX_CLASSES, above it the nonzero cells (COO)."""
    m = np.asarray(matrix)
    if is_dense(len(m)):
        return m.tolist()
    rows, cols = np.nonzero(m)
    return {"format": "coo", "shape": list(m.shape), "rows": rows.tolist(), "cols": cols.tolist(),
            "counts": m[rows, cols].tolist()}


def _counts(value: Any, what: str) -> np.ndarray:
    """A list of non-negative ints (not bools, not floats) as int64."""
    if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise DataError(f"flip matrix {what} must be a list of non-negative integers")
    return np.array(value, dtype=np.int64)


def matrix_from_json(stored: Any) -> np.ndarray:
    """The dense int64 matrix from either form `matrix_to_json` writes (whatever K); DataError if malformed."""
    if isinstance(stored, list):
        k = len(stored)
        if not all(isinstance(r, list) and len(r) == k for r in stored):
            raise DataError(f"a dense flip matrix must be a {k}x{k} nested list")
        m = _counts([v for r in stored for v in r], "entries").reshape(k, k)
    elif isinstance(stored, dict) and stored.get("format") == "coo":
        shape = stored.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and shape[0] == shape[1]
                and isinstance(shape[0], int) and not isinstance(shape[0], bool) and shape[0] >= 2):
            raise DataError(f"a COO flip matrix needs a square 'shape' [K, K] with K >= 2, got {shape!r}")
        k = shape[0]
        rows, cols, counts = (_counts(stored.get(key), key) for key in ("rows", "cols", "counts"))
        if not len(rows) == len(cols) == len(counts):
            raise DataError("a COO flip matrix needs as many 'rows' and 'cols' as 'counts'")
        if len(rows) and max(rows.max(), cols.max()) >= k:
            raise DataError(f"COO flip matrix cells must lie in 0..{k - 1}")
        if len(np.unique(rows * k + cols)) != len(rows):
            raise DataError("a COO flip matrix lists a cell twice")
        m = np.zeros((k, k), dtype=np.int64)
        m[rows, cols] = counts
    else:
        raise DataError('a flip matrix must be a nested list or a {"format": "coo", ...} object')
    return check_matrix(m)


def read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """(matrix, class names) from either layout (`to_csv`, `to_pairs_csv`); rejects anything that is not a square
    matrix of non-negative integers."""
    try:
        rows = list(csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read flip matrix {path}: {exc}") from None
    if rows and rows[0] == PAIRS_HEADER:
        return _read_pairs(path, rows[1:])
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


def _read_pairs(path: Path, body: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    if any(len(r) != 3 for r in body):
        raise DataError(f"{path}: every row of a flip-pairs CSV must be true,landed,count")
    true, landed, counts = (list(c) for c in zip(*body)) if body else ([], [], [])
    names = list(dict.fromkeys(true))  # every class has a row (its diagonal cell), and rows come in class order
    if len(names) < 2:
        raise DataError(f"{path}: a flip-pairs CSV must name at least 2 classes")
    index = {name: i for i, name in enumerate(names)}
    if any(name not in index for name in landed):
        raise DataError(f"{path}: a landed class is not among the true classes {names}")
    try:
        values = np.array([int(c) for c in counts], dtype=np.int64)
    except ValueError:
        raise DataError(f"{path}: flip pair counts must be integers") from None
    if (values < 0).any():
        raise DataError(f"{path}: flip pair counts must be non-negative")
    rows, cols = np.array([index[n] for n in true]), np.array([index[n] for n in landed])
    cells = rows * len(names) + cols
    if len(np.unique(cells)) != len(cells):
        raise DataError(f"{path}: a (true, landed) pair is listed twice")
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    matrix[rows, cols] = values
    return matrix, names
