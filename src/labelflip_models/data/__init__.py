"""Datasets by name: `load_dataset("fashion-mnist")` etc. Nothing downloads unless asked to."""

from __future__ import annotations

import os

from ..errors import ConfigError
from . import cifar10
from .data_dir import DATA_DIR_ENV, named_data_dir
from .dataset import Dataset, balanced_subset, first_n
from .idx_datasets import FASHION_MNIST, MNIST, load_idx_dataset
from .mnist5k import load_mnist5k

DATASETS = ("fashion-mnist", "mnist", "mnist-5k", "cifar-10")
# Known without loading any data, so that tests can be parameterised per class at collection time.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": FASHION_MNIST.class_names, "mnist": MNIST.class_names, "mnist-5k": MNIST.class_names,
    "cifar-10": cifar10.CLASS_NAMES,
}
CHANNELS: dict[str, int] = {"fashion-mnist": 1, "mnist": 1, "mnist-5k": 1, "cifar-10": 3}

__all__ = ["CHANNELS", "CLASS_NAMES", "DATASETS", "DATA_DIR_ENV", "Dataset", "balanced_subset", "first_n",
           "load_dataset"]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """The dataset `name`, from `data_dir` (else $LABELFLIP_DATA_DIR, else the system's copy where one exists).

    A named data dir must exist even for a dataset that does not read it (mnist-5k ships in a package): a wrong
    path is a mistake worth hearing about, not something to ignore."""
    named_data_dir(data_dir, download)
    if name == "fashion-mnist":
        return load_idx_dataset(FASHION_MNIST, data_dir, download)
    if name == "mnist":
        return load_idx_dataset(MNIST, data_dir, download)
    if name == "mnist-5k":
        return load_mnist5k()
    if name == "cifar-10":
        return cifar10.load_cifar10(data_dir, download)
    raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
