"""Minimal-perturbation attacks: each looks for the smallest adversarial it can find in its norm, with no ε.

Fields and defaults are Foolbox 3.3.4's; profiles override them (e.g. fewer steps for a CPU smoke run). DeepFool and
Carlini-Wagner also run through labelflip's own kernels (`minimal_kernels`), Foolbox's algorithms batched and
stopped per image; Brendel-Bethge runs through Foolbox only.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import foolbox as fb
import torch
from foolbox.criteria import Misclassification
from torch import nn

from .base import FLAG, NON_NEGATIVE, POSITIVE, AttackBase, Rule, at_least, one_of, param
from .bounds import Bounds
from .minimal_kernels import carlini_wagner, deepfool
from .starts import STRATEGY, starting_points


class MinimalAttack(AttackBase):
    minimal: ClassVar[bool] = True

    @abstractmethod
    def foolbox(self) -> fb.attacks.base.MinimizationAttack:
        """A fresh Foolbox attack with these parameters."""

    def minimize(self, engine: fb.attacks.base.MinimizationAttack, fmodel: fb.PyTorchModel,
                 x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarials, success) for inputs the model classifies correctly; `engine` is `self.foolbox()`,
        built once per run by the caller and shared by its batches."""
        raw, _, success = engine(fmodel, x, Misclassification(y), epsilons=None)
        return raw, success

    def native(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarials, success) from labelflip's kernel, for attacks with `native_kernel`; `model` is
        `engine.fast_copy(model)`, `x` channels_last on its device."""
        raise NotImplementedError(f"{self.name} has no native kernel")


@dataclass(frozen=True)
class L2CarliniWagner(MinimalAttack):
    """Carlini & Wagner's L2 attack: Adam on a penalised loss, with a binary search over the penalty."""

    name: ClassVar[str] = "l2-cw"
    norm: ClassVar[str] = "l2"
    native_kernel: ClassVar[bool] = True
    binary_search_steps: int = param(9, at_least(1))
    steps: int = param(10000, at_least(1))
    stepsize: float = param(0.01, POSITIVE)
    confidence: float = param(0, NON_NEGATIVE)
    initial_const: float = param(0.001, POSITIVE)
    abort_early: bool = param(True, FLAG)

    def foolbox(self) -> fb.attacks.L2CarliniWagnerAttack:
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.stepsize,
            confidence=self.confidence, initial_const=self.initial_const, abort_early=self.abort_early)

    def minimize(self, engine: fb.attacks.base.MinimizationAttack, fmodel: fb.PyTorchModel,
                 x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Foolbox's C&W, with its failures reported as failures: where it found no adversarial it returns its
        best-so-far's initial value, an all-zero image, which its verdict counts as a success wherever the model
        misclassifies a blank image (at a norm as large as the image's)."""
        raw, success = super().minimize(engine, fmodel, x, y)
        blank = (raw.flatten(1) == 0).all(1) & (x.flatten(1) != 0).any(1)
        return torch.where(blank.view(-1, *[1] * (x.dim() - 1)), x, raw), success & ~blank

    def native(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        return carlini_wagner(model, x, y, **asdict(self), bounds=bounds)


@dataclass(frozen=True)
class _DeepFool(MinimalAttack):
    """DeepFool: linearise the model and step to the nearest linearised boundary among the top classes."""

    steps: int = param(50, at_least(1))
    candidates: int = param(10, at_least(2))
    overshoot: float = param(0.02, NON_NEGATIVE)
    loss: str = param("logits", one_of("logits", "crossentropy"))
    native_kernel: ClassVar[bool] = True

    def native(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
        return deepfool(model, x, y, norm=self.norm, **asdict(self), bounds=bounds)


@dataclass(frozen=True)
class L2DeepFool(_DeepFool):
    name: ClassVar[str] = "l2-deepfool"
    norm: ClassVar[str] = "l2"

    def foolbox(self) -> fb.attacks.L2DeepFoolAttack:
        return fb.attacks.L2DeepFoolAttack(**asdict(self))


@dataclass(frozen=True)
class LinfDeepFool(_DeepFool):
    name: ClassVar[str] = "linf-deepfool"
    norm: ClassVar[str] = "linf"

    def foolbox(self) -> fb.attacks.LinfDeepFoolAttack:
        return fb.attacks.LinfDeepFoolAttack(**asdict(self))


@dataclass(frozen=True)
class _BrendelBethge(MinimalAttack):
    """Brendel & Bethge: walk along the decision boundary towards the image with a trust-region solver.

    The solver runs per image on the CPU (numba), whatever the model's device; its first use compiles it, which
    takes 30-40 s of CPU once per process and attack (L0 and L1 each have their own solver).
    """

    overshoot: float = param(1.1, POSITIVE)
    steps: int = param(1000, at_least(1))
    lr: float = param(0.001, POSITIVE)
    lr_decay: float = param(0.5, Rule("a number in (0, 1]", lambda v: POSITIVE.ok(v) and v <= 1))
    lr_num_decay: int = param(20, at_least(1))
    momentum: float = param(0.8, Rule("a number in [0, 1)", lambda v: NON_NEGATIVE.ok(v) and v < 1))
    binary_search_steps: int = param(10, at_least(1))

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "starting_points": STRATEGY}

    def minimize(self, engine: fb.attacks.base.MinimizationAttack, fmodel: fb.PyTorchModel,
                 x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Only inputs with an adversarial starting point are attacked; the others come back as failures."""
        start, found = starting_points(fmodel, x, y)
        adversarials, success = x.clone(), torch.zeros_like(found)
        if found.any():
            raw, _, ok = engine(fmodel, x[found], Misclassification(y[found]), epsilons=None,
                                starting_points=start[found])
            adversarials[found], success[found] = raw, ok
        return adversarials, success


@dataclass(frozen=True)
class L0BrendelBethge(_BrendelBethge):
    name: ClassVar[str] = "l0-bb"
    norm: ClassVar[str] = "l0"

    def foolbox(self) -> fb.attacks.L0BrendelBethgeAttack:
        return fb.attacks.L0BrendelBethgeAttack(**asdict(self))


@dataclass(frozen=True)
class L1BrendelBethge(_BrendelBethge):
    name: ClassVar[str] = "l1-bb"
    norm: ClassVar[str] = "l1"

    def foolbox(self) -> fb.attacks.L1BrendelBethgeAttack:
        return fb.attacks.L1BrendelBethgeAttack(**asdict(self))
