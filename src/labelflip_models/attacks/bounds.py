"""The input space attacks work in: the model's pixel bounds, the norms that measure perturbations, and valid ε."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import AttackBase

# Norm name -> `ord` of torch.linalg.vector_norm on the flattened perturbation (l0 counts changed entries).
NORMS: dict[str, float] = {"linf": math.inf, "l2": 2.0, "l1": 1.0, "l0": 0.0}


@dataclass(frozen=True)
class Bounds:
    """Pixel-space input range of the model; ε is measured in the same space."""

    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise ConfigError(f"bounds need finite lower < upper, got ({self.lower}, {self.upper})")

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def to_8bit(self, x: torch.Tensor) -> torch.Tensor:
        """`x` rounded to the nearest of 256 levels across the bounds: the image a deployed pipeline sees once an
        adversarial is saved as an 8-bit picture."""
        return self.lower + torch.round((x - self.lower) / self.width * 255) / 255 * self.width


def check_epsilon(epsilon: float, bounds: Bounds, norm: str = "linf") -> float:
    """ε as a float, or ConfigError.

    Every norm needs a positive finite ε. Only L∞ has an upper limit that needs no knowledge of the input
    size: an ε of the bounds' width already reaches every image, so a larger one is a mistake. The L2/L1/L0
    limits grow with the number of pixels, which this check does not know, so they are not enforced.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"epsilon must be a positive finite number, got {epsilon}")
    if norm == "linf" and epsilon > bounds.width:
        raise ConfigError(f"epsilon {epsilon} exceeds the width of the input bounds "
                          f"({bounds.lower}, {bounds.upper}); every image would be reachable")
    return epsilon


def check_epsilon_for(attack: AttackBase, epsilon: float | None, bounds: Bounds) -> float | None:
    """The ε to run `attack` with, or ConfigError: fixed-ε attacks need a valid one, minimal attacks none."""
    if attack.minimal:
        if epsilon is not None:
            raise ConfigError(f"{attack.name} is a minimal-perturbation attack and takes no epsilon (got {epsilon})")
        return None
    if epsilon is None:
        raise ConfigError(f"{attack.name} is a fixed-epsilon attack and needs an epsilon")
    return check_epsilon(epsilon, bounds, attack.norm)
