"""CIFAR-10 from its python-pickle layout (cifar-10-batches-py/), found in a data dir or fetched on request.

The batches are pickles, and unpickling runs whatever callables a file names: they are read with an unpickler
that knows only the few names real batches use, so a planted file is refused instead of executed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import DataError, DataNotFound
from .data_dir import DATA_DIR_ENV, named_data_dir
from .dataset import Dataset
from .download import safe_download
from .names import CIFAR10_CLASSES

NAME = "cifar-10"
# Krizhevsky's label order (label_names in batches.meta; torchvision's CIFAR10.classes).
CLASS_NAMES = CIFAR10_CLASSES
FOLDER = "cifar-10-batches-py"  # what cifar-10-python.tar.gz extracts to, and where torchvision puts it
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
FILES = (*TRAIN_BATCHES, TEST_BATCH, META)
SIDE = 32
PIXELS = 3 * SIDE * SIDE
FULL_SIZES = (50_000, 10_000)
OFFLINE_ADVICE = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                  "and extract it into DATA_DIR")
HOW_TO_GET = OFFLINE_ADVICE + ", or pass `download`"


# Named numpy.core.multiarray._reconstruct in the real (numpy 1, Python 2) files and numpy._core... by numpy 2;
# taken from ndarray's own pickling so that neither module has to be imported (numpy 2 warns on numpy.core).
_RECONSTRUCT = np.empty(0).__reduce__()[0]


def _latin1(text: str, encoding: str) -> bytes:
    # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(text, "latin1").
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str (all text and pixel data) stays bytes
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise DataError(f"{self.path}: refuses to unpickle {module}.{name}: CIFAR-10 batches hold only dicts, "
                            f"lists, bytes and numpy arrays, and unpickling anything else could run code") from None


def _unpickle(path: Path) -> dict[str, Any]:
    """The dict in a batch file, its keys as str (Python 2's files give bytes, re-saved ones str)."""
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # pickle's errors for damaged input are many: UnpicklingError, EOFError, ValueError...
        raise DataError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in obj.items()}


def _require(batch: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in batch]
    if missing:
        found = ", ".join(repr(str(k)) for k in batch) or "none"
        raise DataError(f"{path}: missing key {', '.join(map(repr, missing))} (keys found: {found})")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _check_meta(path: Path) -> None:
    meta = _unpickle(path)
    _require(meta, path, ("label_names",))
    names = meta["label_names"]
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{path}: label_names must be a list of names, found {type(names).__name__}")
    names = tuple(_text(n) for n in names)
    if len(names) != len(CLASS_NAMES):
        raise DataError(f"{path}: label_names has {len(names)} names, CIFAR-10 has {len(CLASS_NAMES)}: "
                        f"{', '.join(CLASS_NAMES)}")
    differ = [f"{i}: {got!r} instead of {want!r}" for i, (got, want) in enumerate(zip(names, CLASS_NAMES))
              if got != want]
    if differ:
        raise DataError(f"{path}: label_names differ from CIFAR-10's at {'; '.join(differ)} "
                        f"(not CIFAR-10, or its classes reordered)")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 32, 32, 3) uint8, labels (n,) int64) of one batch file."""
    batch = _unpickle(path)
    _require(batch, path, ("data", "labels"))
    data, raw_labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: data must be a numpy uint8 array, found {type(data).__name__}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: data must be uint8 pixels, found dtype {data.dtype}")
    if data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{path}: data must have shape (n, {PIXELS}) (one 3x32x32 image per row), "
                        f"found {data.shape}")
    if not isinstance(raw_labels, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: labels must be a list of class numbers, found {type(raw_labels).__name__}")
    try:
        labels = np.asarray(raw_labels)
    except ValueError:  # ragged nesting
        labels = np.asarray(raw_labels, dtype=object)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: labels must be a flat list of whole numbers 0..9, found {labels.dtype} "
                        f"values of shape {labels.shape}")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{path}: labels must lie in 0..{len(CLASS_NAMES) - 1}, "
                        f"found {int(labels.min())}..{int(labels.max())}")
    # Each row is the red plane, then green, then blue, each 32 rows of 32: to (n, 32, 32, 3) channels-last.
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _candidate_dirs(data_dir: Path | None) -> list[Path]:
    return [] if data_dir is None else [data_dir / FOLDER, data_dir / NAME / FOLDER]


def _locate(data_dir: Path | None) -> Path:
    """The first candidate folder holding any of the files; DataNotFound unless it holds all of them."""
    candidates = _candidate_dirs(data_dir)
    for directory in candidates:
        present = [name for name in FILES if (directory / name).is_file()]
        if not present:
            continue
        missing = [name for name in FILES if name not in present]
        if missing:
            raise DataNotFound(f"{NAME}: {directory} is incomplete, missing {', '.join(missing)}; "
                               f"to get it: {HOW_TO_GET}")
        return directory
    looked = ", ".join(str(d) for d in candidates) or "nowhere (no data dir given)"
    raise DataNotFound(f"{NAME} not found (looked in: {looked}; data dir from `data_dir` or ${DATA_DIR_ENV}); "
                       f"to get it: {HOW_TO_GET}")


def _download(data_dir: Path) -> None:
    import torchvision.datasets

    safe_download(NAME, data_dir,
                  lambda: torchvision.datasets.CIFAR10(root=str(data_dir), train=True, download=True),
                  [data_dir / FOLDER, data_dir / torchvision.datasets.CIFAR10.filename], OFFLINE_ADVICE)


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    directory = named_data_dir(data_dir, download)
    if download:
        if directory is None:
            raise DataError(f"`download` needs a data dir to download {NAME} into (`data_dir` or ${DATA_DIR_ENV})")
        try:
            _locate(directory)
        except DataNotFound:
            _download(directory)
    folder = _locate(directory)
    _check_meta(folder / META)
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    test_images, test_labels = _read_batch(folder / TEST_BATCH)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    sizes = (len(train_labels), len(test_labels))
    note = "" if sizes == FULL_SIZES else (
        f"{sizes[0]:,} training and {sizes[1]:,} test images, not CIFAR-10's {FULL_SIZES[0]:,} and {FULL_SIZES[1]:,}")
    return Dataset(name=NAME, class_names=CLASS_NAMES, train_images=train_images, train_labels=train_labels,
                   test_images=test_images, test_labels=test_labels, source=str(folder), note=note)
