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
from ..data import Dataset
from ..errors import DataError
from ..models.io import check_model, load_model, logits_adapter
from .results import build_noise_result, build_result

# Images attacked at a time: about 600 MB per float32 tensor (images, raw and clipped adversarials) at 224×224.
CHUNK_IMAGES = 1024
# Runs up to this size keep their images and adversarials for the gate's checks; larger ones keep per-image figures.
KEEP_BYTES = 1 << 30


def pixel_images(data: Dataset, indices: np.ndarray, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images mapped from [0, 1] onto the model's pixel range, and their labels."""
    images, labels = data.tensors("test", indices)
    return bounds.lower + images * (bounds.upper - bounds.lower), labels


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
                  engine: str = "auto", batch_size: int | None = None,
                  progress: bool = False) -> tuple[dict[str, Any], AttackResult]:
    """Attack the test images `indices` (described by `selection`); result.json's content and the adversarials.

    The images stream through in chunks of CHUNK_IMAGES, so memory does not grow with the test set. A run whose
    images and adversarials would take more than KEEP_BYTES keeps only per-image figures (`AttackResult.reduced`).
    """
    start = time.perf_counter()
    keep = len(indices) * int(np.prod(data.test_images.shape[1:])) * 3 * 4 <= KEEP_BYTES
    parts = []
    for i, (images, labels) in enumerate(data.test_chunks(indices, CHUNK_IMAGES)):
        images = bounds.lower + images * (bounds.upper - bounds.lower)
        part = run_attack(model, images, labels, attack, epsilon, bounds=bounds, batch_size=batch_size,
                          seed=chunk_seed(seed, i), progress=progress, engine=engine)
        parts.append(part if keep else part.reduced())
    if not parts:
        raise DataError(f"no test images selected from {data.name}")
    attacked = AttackResult.concat(parts, {**parts[0].params, "seed": seed, "chunk_images": CHUNK_IMAGES})
    result = build_result(data, model_info, selection, attacked, _device(model), time.perf_counter() - start)
    return result, attacked


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk `chunk` of a run: the run's own for the first (a run of one chunk is seeded as it always
    was), then independent streams derived from both."""
    return seed if chunk == 0 else int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def probe_noise(data: Dataset, model: nn.Module, model_info: dict[str, Any], n: int, seed: int,
                bounds: Bounds) -> dict[str, Any]:
    """Classify `n` uniform-noise images of the dataset's shape; noise.json's content."""
    start = time.perf_counter()
    shape = tuple(data.tensors("test", np.arange(1))[0].shape[1:])
    range_ = (bounds.lower, bounds.upper)
    counts = noise_probe(model, n, shape, range_, seed)
    return build_noise_result(data, model_info, counts, seed, range_, _device(model), time.perf_counter() - start)
