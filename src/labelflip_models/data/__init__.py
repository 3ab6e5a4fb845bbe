"""Datasets by name: `load_dataset("fashion-mnist")` etc. Nothing downloads unless asked to."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .data_dir import DATA_DIR_ENV, named_data_dir
from .names import CHANNELS, CLASS_NAMES, DATASETS

if TYPE_CHECKING:
    from .dataset import Dataset, balanced_subset, first_n
    from .own import Preprocess

__all__ = ["CHANNELS", "CLASS_NAMES", "DATASETS", "DATA_DIR_ENV", "Dataset", "Preprocess", "balanced_subset",
           "first_n", "is_builtin", "load_dataset"]


def __getattr__(name: str) -> Any:
    # The loaders need torch; importing them lazily keeps the names above free for the pytest plugin to read.
    if name in ("Dataset", "balanced_subset", "first_n"):
        from . import dataset

        return getattr(dataset, name)
    if name == "Preprocess":
        from .own import Preprocess

        return Preprocess
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_builtin(dataset: str) -> bool:
    """Whether `dataset` names a built-in dataset rather than a path to a user's own data (a folder called like a
    built-in one is given as ./mnist)."""
    return dataset in DATASETS


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False, *,
                 class_names: tuple[str, ...] | None = None, preprocess: Preprocess | None = None) -> Dataset:
    """The built-in dataset `name`, from `data_dir` (else $LABELFLIP_DATA_DIR, else the system's copy where one
    exists); or, when `name` is not a built-in one, the user's test set at that path (`own.py`), its classes in
    the order of `class_names` when given.

    A named data dir must exist even for a dataset that does not read it (mnist-5k ships in a package): a wrong
    path is a mistake worth hearing about, not something to ignore."""
    from . import cifar10
    from .idx_datasets import FASHION_MNIST, MNIST, load_idx_dataset
    from .mnist5k import load_mnist5k
    from .own import Preprocess

    if not is_builtin(name):
        return _load_own(name, class_names, preprocess or Preprocess())
    if preprocess is not None and preprocess != Preprocess():
        raise ConfigError(f"`resize`/`center_crop` apply to your own data, not to the built-in dataset {name!r}")
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


def _load_own(path: str, class_names: tuple[str, ...] | None, preprocess: Preprocess) -> Dataset:
    import numpy as np

    from .dataset import Dataset
    from .own import load_own_test_set

    if not os.path.exists(path):
        raise ConfigError(f"`dataset`: unknown dataset {path!r}: neither a built-in dataset ({', '.join(DATASETS)}) "
                          "nor an existing path to your own data (an ImageFolder tree, a .npz, or a datasets "
                          "save_to_disk folder)")
    source, names, order, images, labels, note = load_own_test_set(path, class_names, preprocess)
    empty = np.zeros((0, *images.shape[1:]), dtype=images.dtype)
    return Dataset(source.name, names, empty, np.zeros(0, dtype=np.int64), images, labels,
                   f"{source.kind} {source.path.absolute()}", note=note, class_order=order, own=True)
