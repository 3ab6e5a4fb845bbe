"""MNIST and Fashion-MNIST from IDX files: found in a data dir, Debian's package, or an opt-in download."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, DataNotFound
from .data_dir import DATA_DIR_ENV, named_data_dir
from .dataset import Dataset
from .download import safe_download
from .idx import read_idx
from .names import DIGITS, FASHION_MNIST_CLASSES

_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}


@dataclass(frozen=True)
class IdxSource:
    name: str
    class_names: tuple[str, ...]
    torchvision_class: str  # also the folder name torchvision downloads into: <root>/<class>/raw
    system_dirs: tuple[Path, ...]
    how_to_get: str


FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    class_names=FASHION_MNIST_CLASSES,
    torchvision_class="FashionMNIST",
    system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    how_to_get="install Debian's package (apt-get install dataset-fashion-mnist), "
               "or put the four IDX files in DATA_DIR/fashion-mnist/, or pass `download`",
)

MNIST = IdxSource(
    name="mnist",
    class_names=DIGITS,
    torchvision_class="MNIST",
    system_dirs=(),
    how_to_get="put the four IDX files in DATA_DIR/mnist/, or pass `download`; "
               "without them use the 5,000-digit sample 'mnist-5k'",
)


def _candidate_dirs(source: IdxSource, data_dir: Path | None) -> list[Path]:
    # System copies are a fall-back for callers who name no data dir, never a substitute for the one they name.
    if data_dir is not None:
        return [data_dir / source.name, data_dir / source.torchvision_class / "raw"]
    return list(source.system_dirs)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _locate(source: IdxSource, data_dir: Path | None) -> dict[str, Path]:
    candidates = _candidate_dirs(source, data_dir)
    for directory in candidates:
        found = {key: _find_file(directory, stem) for key, (stem, _) in _FILES.items()}
        if not any(found.values()):
            continue
        missing = [_FILES[key][0] + "[.gz]" for key, path in found.items() if path is None]
        if missing:
            raise DataError(f"{source.name}: {directory} is incomplete, missing {', '.join(missing)}; "
                            f"to get it: {source.how_to_get}")
        return found  # type: ignore[return-value]
    looked = ", ".join(str(d) for d in candidates) or "nowhere (no data dir given)"
    raise DataNotFound(f"{source.name} not found (looked in: {looked}; data dir from `data_dir` or "
                       f"${DATA_DIR_ENV}); to get it: {source.how_to_get}")


def _download(source: IdxSource, data_dir: Path) -> None:
    import torchvision.datasets

    tv_class = getattr(torchvision.datasets, source.torchvision_class)
    safe_download(source.name, data_dir, lambda: tv_class(root=str(data_dir), train=True, download=True),
                  [data_dir / source.torchvision_class], source.how_to_get.replace(", or pass `download`", ""))


def load_idx_dataset(source: IdxSource, data_dir: str | os.PathLike | None = None,
                     download: bool = False) -> Dataset:
    directory = named_data_dir(data_dir, download)
    if download:
        if directory is None:
            raise DataError(f"`download` needs a data dir to download {source.name} into "
                            f"(`data_dir` or ${DATA_DIR_ENV})")
        try:
            _locate(source, directory)
        except DataError:
            _download(source, directory)
    paths = _locate(source, directory)
    arrays = {key: read_idx(paths[key], ndim) for key, (_, ndim) in _FILES.items()}
    for key, arr in arrays.items():
        if arr.dtype != np.uint8:
            raise DataError(f"{paths[key]}: expected unsigned bytes (IDX type 0x08), found {arr.dtype}")
    return Dataset(
        name=source.name, class_names=source.class_names,
        train_images=arrays["train_images"], train_labels=arrays["train_labels"].astype("int64"),
        test_images=arrays["test_images"], test_labels=arrays["test_labels"].astype("int64"),
        source=str(paths["test_images"].parent),
    )
