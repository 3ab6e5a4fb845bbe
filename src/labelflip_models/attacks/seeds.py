"""Where an attack's randomness comes from: every draw is a function of the run's seed and global image ids.

An image's random start comes from its own generator, seeded from (seed, image id): it is the same whatever the
batch size, the chunking or the number of processes the images are split over. Attacks that draw for a whole
batch (AutoAttack's components, Brendel-Bethge's starting points) are seeded per batch from (seed, id of the
batch's first image), so they repeat whenever the batches do: a distributed run shards whole batches of the
single-process batch grid (runs/distributed.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Separates the per-image streams from the per-batch seeds drawn for the same id.
_IMAGE, _BATCH = 0, 1


def _derived(seed: int, image_id: int, purpose: int) -> int:
    return int(np.random.SeedSequence([seed, image_id, purpose]).generate_state(1, np.uint64)[0])


def batch_seed(seed: int, first_id: int) -> int:
    """The seed of the batch whose first image has global id `first_id` (a value torch.manual_seed takes)."""
    return _derived(seed, first_id, _BATCH) % (2**31 - 1)


def image_draws(seed: int, ids: torch.Tensor, size: int, normal: bool = False) -> torch.Tensor:
    """`size` fp32 draws per image, U[0, 1) or N(0, 1), from each image's own generator: shape (len(ids), size)."""
    out = torch.empty(len(ids), size, device="cpu")  # the generators are CPU generators
    for row, image_id in zip(out, ids.tolist()):
        generator = torch.Generator().manual_seed(_derived(seed, image_id, _IMAGE))
        (row.normal_ if normal else row.uniform_)(generator=generator)
    return out


def random_start(x: torch.Tensor, ids: torch.Tensor, seed: int, epsilon: float, norm: str) -> torch.Tensor:
    """A perturbation drawn uniformly from each image's ε-ball (L∞: the cube; L2: the first n coordinates of a
    uniform point on the (n+2)-sphere, Foolbox's method), on x's device and dtype."""
    n = math.prod(x.shape[1:])
    if norm == "linf":
        delta = image_draws(seed, ids, n) * (2 * epsilon) - epsilon
    elif norm == "l2":
        sphere = image_draws(seed, ids, n + 2, normal=True)
        delta = epsilon * (sphere / sphere.norm(dim=1, keepdim=True))[:, :n]
    else:
        raise ValueError(f"random starts exist for the linf and l2 norms, not {norm!r}")
    return delta.view(x.shape).to(device=x.device, dtype=x.dtype)
