"""The in-memory dataset every loader returns, and the deterministic test-set selections."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 arrays (N, H, W) or (N, H, W, C), or float32 ones in [0, 1] (a user's .npz); labels as
    int64 arrays."""

    name: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    # A sample (e.g. mnist-5k) must say so in every output that quotes numbers from it.
    note: str = ""
    # How class indices were assigned, for a user's own data (e.g. "sorted folder names").
    class_order: str = ""
    # A user's own test set (no train split; classes may hold fewer images than a profile asks for).
    own: bool = False

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) != len(labels):
                raise DataError(f"{self.name} {split}: {len(images)} images but {len(labels)} labels ({self.source})")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise DataError(
                    f"{self.name} {split}: labels must lie in 0..{len(self.class_names) - 1}, "
                    f"found {int(labels.min())}..{int(labels.max())} ({self.source})")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(f"{self.name}: train images {self.train_images.shape[1:]} and test images "
                            f"{self.test_images.shape[1:]} differ in shape ({self.source})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 1 if self.test_images.ndim == 3 else self.test_images.shape[-1]

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the name and every image and label: identifies the exact data a model saw."""
        h = hashlib.sha256(self.name.encode())
        for arr in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(str(arr.shape).encode())
            if hasattr(arr, "digest"):  # images decoded on demand: their files' bytes
                arr.digest(h)
            else:
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def tensors(self, split: str, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] shaped (N, C, H, W) and int64 labels."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return _as_tensors(images, labels)


    def test_chunks(self, indices: np.ndarray, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test images `indices`, as `tensors` gives them, in consecutive chunks of `size`. Images decoded on
        demand are decoded a chunk ahead of the caller by a pool of threads (Pillow decodes outside the GIL), so
        only two chunks are ever held.

        Threads, not processes: a process forked from one that has run torch can inherit a lock another thread held
        at the fork and hang, and forkserver/spawn workers pass tensors over Unix sockets, which test sandboxes
        (pytest-socket) block."""
        images = self.test_images
        if not hasattr(images, "decode"):
            for i in range(0, len(indices), size):
                yield self.tensors("test", indices[i:i + size])
            return
        chunks = [indices[i:i + size] for i in range(0, len(indices), size)]
        with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="labelflip-decode") as pool:
            pending = [pool.submit(images.decode, int(i)) for i in chunks[0]] if chunks else []
            for k, chunk in enumerate(chunks):
                decoded = pending
                if k + 1 < len(chunks):
                    pending = [pool.submit(images.decode, int(i)) for i in chunks[k + 1]]
                try:
                    stacked = np.stack([future.result() for future in decoded])
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
                del decoded  # nothing of a chunk stays referenced here while the caller attacks it
                yield _as_tensors(stacked, self.test_labels[chunk])


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 or [0, 1] float images (N, H, W[, C]) as float (N, C, H, W) in [0, 1], never sharing the arrays'
    memory; labels as int64."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
    return (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels.astype(np.int64)))


# Threads decoding images beside the attack (see Dataset.test_chunks).
DECODE_THREADS = 4


def first_n(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first `limit` images in dataset order."""
    if limit <= 0:
        raise DataError(f"limit must be a positive number of images, not {limit}")
    return np.arange(min(limit, len(labels)))


def balanced_subset(labels: np.ndarray, per_class: int, num_classes: int, at_most: bool = False) -> np.ndarray:
    """Indices of the first `per_class` images of each class, in dataset order. `at_most` takes every image of a
    class that has fewer (a user's own data, where the gate then reports such classes as too small to gate)."""
    if per_class <= 0:
        raise DataError(f"per_class must be positive, not {per_class}")
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    short = [c for c, idx in enumerate(chosen) if len(idx) < per_class]
    if short and not at_most:
        raise DataError(f"classes {short} have fewer than {per_class} test images")
    return np.sort(np.concatenate(chosen))
