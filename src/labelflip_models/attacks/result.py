"""What one attack run produced, and the quantities measured from it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .bounds import NORMS


@dataclass
class AttackResult:
    """Images, adversarials and predictions of one run, all on the CPU.

    `attacked` marks the images the attack had to move: every image for a fixed-ε attack; for a minimal
    attack only the correctly classified ones (a misclassified image is its own adversarial, at norm 0).
    For a minimal attack, `clipped` is the image itself wherever the attack failed (`success` False).

    A run too large to keep in memory keeps only per-image figures (`reduced`): then `images`, `raw` and `clipped`
    are None, and the norms and the adversarials' range were measured from them before they were dropped.
    """

    epsilon: float | None  # None for minimal attacks
    norm: str
    images: torch.Tensor | None
    labels: torch.Tensor
    raw: torch.Tensor | None
    clipped: torch.Tensor | None
    success: torch.Tensor
    attacked: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, torch.Tensor] | None = None  # "norms", "linf_norms", "range" of a reduced run
    # AutoAttack-family runs: per image, the index into params["components"] of the component that broke it, or −1.
    broken_by: torch.Tensor | None = None
    # The prediction on each clipped adversarial rounded to 8-bit pixels (Bounds.to_8bit).
    rounded_pred: torch.Tensor | None = None

    @property
    def survives_8bit(self) -> tuple[int, int]:
        """(k, n): of the n images the attack flipped (correctly classified, adversarial in another class), the k
        whose adversarial still is in another class once rounded to 8 bits; (0, 0) where nothing was rounded."""
        if self.rounded_pred is None:
            return 0, 0
        flipped = (self.clean_pred == self.labels) & (self.adv_pred != self.labels)
        return int((flipped & (self.rounded_pred != self.labels)).sum()), int(flipped.sum())

    @property
    def landed(self) -> torch.Tensor:
        """Class each image ends up in: its clean prediction if the model already gets it wrong
        (it needs no attack), else the prediction on its clipped adversarial."""
        return torch.where(self.clean_pred != self.labels, self.clean_pred, self.adv_pred)

    @property
    def kept(self) -> bool:
        """Whether the images and adversarials are still here."""
        return self.clipped is not None

    @property
    def norms(self) -> torch.Tensor:
        """Per image, the size of clipped − image in the attack's norm (l0: how many entries changed)."""
        if self.measured is not None:
            return self.measured["norms"]
        return torch.linalg.vector_norm((self.clipped - self.images).flatten(1), ord=NORMS[self.norm], dim=1)

    @property
    def linf_norms(self) -> torch.Tensor:
        if self.measured is not None:
            return self.measured["linf_norms"]
        return (self.clipped - self.images).flatten(1).abs().amax(1)

    @property
    def adversarial_range(self) -> tuple[float, float]:
        """Smallest and largest value of any adversarial (the input bounds must contain them)."""
        if self.measured is not None:
            return float(self.measured["range"][0]), float(self.measured["range"][1])
        if not len(self.clipped):
            return 0.0, 0.0
        return float(self.clipped.min()), float(self.clipped.max())

    def reduced(self) -> AttackResult:
        """The same run without its images and adversarials: what a streamed run keeps of each chunk."""
        low, high = self.adversarial_range
        measured = {"norms": self.norms, "linf_norms": self.linf_norms,
                    "range": torch.tensor([low, high], device="cpu")}
        return replace(self, images=None, raw=None, clipped=None, measured=measured)

    @classmethod
    def concat(cls, parts: list[AttackResult], params: dict[str, Any]) -> AttackResult:
        """One run from the runs of consecutive chunks of its images (all kept, or all reduced)."""
        first = parts[0]

        def cat(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        tensors = {name: cat(name) for name in ("labels", "success", "attacked", "clean_pred", "adv_pred")}
        if first.kept:
            images = {name: cat(name) for name in ("images", "raw", "clipped")}
            measured = None
        else:
            images = dict.fromkeys(("images", "raw", "clipped"))
            ranges = torch.stack([p.measured["range"] for p in parts])
            measured = {"norms": cat("norms"), "linf_norms": cat("linf_norms"),
                        "range": torch.stack([ranges[:, 0].min(), ranges[:, 1].max()])}
        broken_by = None if first.broken_by is None else cat("broken_by")
        # Chunks stored by an earlier version have none: the run then reports no 8-bit figure.
        rounded_pred = None if any(p.rounded_pred is None for p in parts) else cat("rounded_pred")
        return cls(epsilon=first.epsilon, norm=first.norm, **images, **tensors,
                   seconds=sum(p.seconds for p in parts), params=params, measured=measured, broken_by=broken_by,
                   rounded_pred=rounded_pred)
