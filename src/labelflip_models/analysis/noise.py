"""White-noise probe: which classes a model assigns to uniform noise images, and whether that changed.

Noise is drawn batch by batch from one seeded CPU torch.Generator. torch fills tensors from the
generator's stream in order, so the images (and the counts) depend on the seed only, not on the batch
size; a test pins this. compare_histograms is Pearson's chi-square test of homogeneity on the 2 x K table
(no Yates correction, so the statistic means the same for every K). Classes predicted in neither run are
dropped: they carry no information and would make expected counts zero. With fewer than two classes
left both runs put every image in the same class, so the histograms agree: statistic 0, dof 0, p = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import chi2_contingency
from torch import nn

from ..attacks.bounds import Bounds
from ..errors import ConfigError, DataError
from ..models.architectures import predict
from .stats import wilson_interval


def _draw(g: torch.Generator, n: int, shape: tuple[int, ...], bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g, device="cpu")


def _check(n: int, shape: tuple[int, ...], bounds: tuple[float, float]) -> tuple[float, float]:
    if n < 1:
        raise ConfigError(f"the number of noise images must be positive, got {n}")
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"image shape must be non-empty with positive sizes, got {tuple(shape)}")
    checked = Bounds(float(bounds[0]), float(bounds[1]))
    return checked.lower, checked.upper


def uniform_noise(n: int, shape: tuple[int, ...], bounds: tuple[float, float], seed: int) -> torch.Tensor:
    """n images of i.i.d. Uniform(bounds) pixels."""
    return _draw(torch.Generator().manual_seed(seed), n, tuple(shape), _check(n, shape, bounds))


@torch.no_grad()
def noise_probe(model: nn.Module, n: int, shape: tuple[int, ...], bounds: tuple[float, float],
                seed: int = 0, batch_size: int = 1000) -> np.ndarray:
    """Counts of the model's predictions on `uniform_noise(n, shape, bounds, seed)`, one per class."""
    checked = _check(n, shape, bounds)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if model.training:
        raise ConfigError("the model is in training mode; call model.eval() before probing it")
    g = torch.Generator().manual_seed(seed)
    counts = None
    for start in range(0, n, batch_size):
        images = _draw(g, min(batch_size, n - start), tuple(shape), checked)
        if counts is None:  # the number of classes is the width of the model's output
            device = next(model.parameters()).device
            counts = np.zeros(model(images[:1].to(device)).shape[1], dtype=np.int64)
        counts += np.bincount(predict(model, images, batch_size).numpy(), minlength=len(counts))
    return counts


def noise_summary(counts: np.ndarray, class_names: Sequence[str], confidence: float = 0.95) -> dict[str, Any]:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(class_names),):
        raise DataError(f"{counts.size} noise counts for {len(class_names)} classes")
    n = int(counts.sum())
    if n == 0 or (counts < 0).any():
        raise DataError("noise counts must be non-negative and not all zero")
    lo, hi = wilson_interval(counts, n, confidence)
    order = np.argsort(-counts, kind="stable")  # ties keep class order
    return {"n": n,
            "histogram": {name: {"count": int(c), "share": int(c) / n, "ci": [float(a), float(b)]}
                          for name, c, a, b in zip(class_names, counts, lo, hi)},
            "top": [class_names[i] for i in order]}


def compare_histograms(baseline_counts: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    base, cur = np.asarray(baseline_counts, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    if base.ndim != 1 or base.shape != cur.shape:
        raise DataError(f"noise histograms differ in shape: {base.shape} vs {cur.shape}")
    table = np.stack([base, cur])
    if (table < 0).any() or (table.sum(1) == 0).any():
        raise DataError("noise histograms need non-negative counts and at least one image each")
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return {"test": "chi-square homogeneity", "statistic": 0.0, "dof": 0, "p_value": 1.0}
    res = chi2_contingency(table, correction=False)
    return {"test": "chi-square homogeneity", "statistic": float(res.statistic), "dof": int(res.dof),
            "p_value": float(res.pvalue)}
