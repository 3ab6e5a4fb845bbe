"""What one attack run produced, and the quantities measured from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .bounds import NORMS


@dataclass
class AttackResult:
    """Images, adversarials and predictions of one run, all on the CPU.

    `attacked` marks the images the attack had to move: every image for a fixed-ε attack; for a minimal
    attack only the correctly classified ones (a misclassified image is its own adversarial, at norm 0).
    For a minimal attack, `clipped` is the image itself wherever the attack failed (`success` False).
    """

    epsilon: float | None  # None for minimal attacks
    norm: str
    images: torch.Tensor
    labels: torch.Tensor
    raw: torch.Tensor
    clipped: torch.Tensor
    success: torch.Tensor
    attacked: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def landed(self) -> torch.Tensor:
        """Class each image ends up in: its clean prediction if the model already gets it wrong
        (it needs no attack), else the prediction on its clipped adversarial."""
        return torch.where(self.clean_pred != self.labels, self.clean_pred, self.adv_pred)

    @property
    def norms(self) -> torch.Tensor:
        """Per image, the size of clipped − image in the attack's norm (l0: how many entries changed)."""
        return torch.linalg.vector_norm((self.clipped - self.images).flatten(1), ord=NORMS[self.norm], dim=1)

    @property
    def linf_norms(self) -> torch.Tensor:
        return (self.clipped - self.images).flatten(1).abs().amax(1)
