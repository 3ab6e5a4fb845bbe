"""Running a model on a dataset: an attack on chosen test images, or the white-noise probe, each giving the content
of its result file. The CLI and the gate both run through here, so their runs are the same runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis.noise import noise_probe
from ..attacks import Attack, AttackResult, Bounds, run_attack
from ..attacks.autoattack import AutoAttackFamily
from ..attacks.memo import Memo
from ..attacks.run import default_batch
from ..data import Dataset
from ..errors import DataError
from ..models.io import check_model, load_model, logits_adapter
from .distributed import World, check_gathered, chunk_path, flip_counts, gather, load_chunk, save_chunk, shard
from .results import build_noise_result, build_result

# Images attacked at a time, at least (a device's batch if larger): about 150 MB per float32 tensor (images, raw
# and clipped adversarials) at 224×224.
CHUNK_IMAGES = 256
# Runs up to this size keep their images and adversarials for the gate's checks; larger ones keep per-image figures.
KEEP_BYTES = 1 << 30


def pixel_images(data: Dataset, indices: np.ndarray, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images mapped from [0, 1] onto the model's pixel range, and their labels."""
    images, labels = data.tensors("test", indices)
    return to_pixels(images, bounds), labels


def to_pixels(images: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Images in [0, 1] mapped onto the model's pixel range."""
    return bounds.lower + images * (bounds.upper - bounds.lower)


def load_user_model(path: Path, data: Dataset, bounds: Bounds, *, arch: str | None,
                    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, trust_pickle: bool) -> nn.Module:
    """A user's model file, loaded safely and checked on a few of the dataset's images (CPU, eval mode); one whose
    output holds its logits in a tuple, mapping or `.logits` comes wrapped to return them (`logits_adapter`)."""
    sample, _ = pixel_images(data, np.arange(min(8, len(data.test_labels))), bounds)
    model = load_model(path, arch=arch, mean=mean, std=std, trust_pickle=trust_pickle, in_channels=sample.shape[1],
                       num_classes=data.num_classes)
    model = logits_adapter(model, sample)
    check_model(model, sample, data.num_classes)
    return model


def _device(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


def attack_images(data: Dataset, model: nn.Module, model_info: dict[str, Any], indices: np.ndarray,
                  selection: str, attack: Attack, epsilon: float | None, *, bounds: Bounds, seed: int,
                  engine: str = "auto", batch_size: int | None = None, progress: bool = False,
                  world: World = World(), scratch: Path | None = None,
                  memo: Memo | None = None) -> tuple[dict[str, Any], AttackResult] | None:
    """Attack the test images `indices` (described by `selection`); result.json's content and the adversarials.

    Split over the processes of `world`, each rank attacks its shard (runs/distributed.py) and only rank 0 gets
    the result (the others None). With `scratch`, each finished chunk is kept there and not attacked again.
    `memo`: the model's, shared with its other runs (run_attack).

    The images stream through in chunks of CHUNK_IMAGES (or the batch size), so memory does not grow with the test
    set; each image's randomness comes from (seed, its test-set index), so chunking changes no result. A run whose
    images and adversarials would take more than KEEP_BYTES keeps only per-image figures (`AttackResult.reduced`).
    """
    if isinstance(attack, AutoAttackFamily):
        attack.check_classes(data.num_classes)
    start = time.perf_counter()
    keep = len(indices) * int(np.prod(data.test_images.shape[1:])) * 3 * 4 <= KEEP_BYTES
    device = next(model.parameters()).device.type
    # Whole batches per chunk and per shard, so neither chunking nor sharding changes any batch an attack sees.
    valid = isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0
    batch = batch_size if valid else default_batch(device)  # run_attack refuses a bad one
    chunk = batch * -(-CHUNK_IMAGES // batch)
    if not len(indices):
        raise DataError(f"no test images selected from {data.name}")
    mine = shard(len(indices), batch, world)
    parts = []
    for i, (images, labels) in enumerate(data.test_chunks(indices[mine.start:mine.stop], chunk)):
        first = mine.start + i * chunk
        ids = torch.as_tensor(np.asarray(indices[first:first + len(labels)], dtype=np.int64), device="cpu")
        path = None if scratch is None else chunk_path(scratch, first, first + len(labels))
        part = None if path is None else load_chunk(path, ids)
        if part is None:
            part = run_attack(model, to_pixels(images, bounds), labels, attack, epsilon, bounds=bounds,
                              batch_size=batch_size, seed=seed, progress=progress, engine=engine, ids=ids,
                              memo=memo)
            part = part if keep else part.reduced()
            if path is not None:
                save_chunk(part, ids, path)
        del images
        parts.append(part)
        del part
    counts = flip_counts(parts, data.num_classes, world)
    gathered = gather(parts, world)
    if gathered is None:
        return None
    check_gathered(gathered, counts, len(indices))
    attacked = AttackResult.concat(gathered, {**gathered[0].params, "chunk_images": chunk})
    result = build_result(data, model_info, selection, attacked, _device(model), time.perf_counter() - start)
    return result, attacked


def probe_noise(data: Dataset, model: nn.Module, model_info: dict[str, Any], n: int, seed: int,
                bounds: Bounds) -> dict[str, Any]:
    """Classify `n` uniform-noise images of the dataset's shape; noise.json's content."""
    start = time.perf_counter()
    shape = tuple(data.tensors("test", np.arange(1))[0].shape[1:])
    range_ = (bounds.lower, bounds.upper)
    counts = noise_probe(model, n, shape, range_, seed)
    return build_noise_result(data, model_info, counts, seed, range_, _device(model), time.perf_counter() - start)
