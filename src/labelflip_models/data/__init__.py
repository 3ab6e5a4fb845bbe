"""Datasets by name: `load_dataset("fashion-mnist")` etc. Nothing downloads unless asked to."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .data_dir import DATA_DIR_ENV, named_data_dir
from .names import CHANNELS, CLASS_NAMES, DATASETS

if TYPE_CHECKING:
    from .dataset import Dataset, balanced_subset, first_n

__all__ = ["CHANNELS", "CLASS_NAMES", "DATASETS", "DATA_DIR_ENV", "Dataset", "balanced_subset", "first_n",
           "load_dataset"]


def __getattr__(name: str) -> Any:
    # The loaders need torch; importing them lazily keeps the names above free for the pytest plugin to read.
    if name in ("Dataset", "balanced_subset", "first_n"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """The dataset `name`, from `data_dir` (else $LABELFLIP_DATA_DIR, else the system's copy where one exists).

    A named data dir must exist even for a dataset that does not read it (mnist-5k ships in a package): a wrong
    path is a mistake worth hearing about, not something to ignore."""
    from . import cifar10
    from .idx_datasets import FASHION_MNIST, MNIST, load_idx_dataset
    from .mnist5k import load_mnist5k

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
