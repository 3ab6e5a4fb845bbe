"""Fixed-ε attacks: each looks for an adversarial within distance ε of the image, in its norm.

All three are Foolbox's gradient-descent scheme (random start, `steps` steps of `rel_stepsize`·ε, projection), so
each runs either through Foolbox or through labelflip's own kernel (`kernels.pgd`); see `engine`. Step sizes are
relative to ε, so one setting serves every ε of a profile.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import foolbox as fb

from .base import FLAG, POSITIVE, AttackBase, at_least, param


class FixedAttack(AttackBase):
    minimal: ClassVar[bool] = False
    native_kernel: ClassVar[bool] = True
    steps: int
    rel_stepsize: float
    random_start: bool

    @abstractmethod
    def foolbox(self) -> fb.attacks.base.FixedEpsilonAttack:
        """A fresh Foolbox attack with these parameters."""


@dataclass(frozen=True)
class FGSM(FixedAttack):
    """Fast gradient sign method: one step of size ε (Foolbox's LinfFastGradientAttack)."""

    name: ClassVar[str] = "fgsm"
    norm: ClassVar[str] = "linf"
    steps: ClassVar[int] = 1
    rel_stepsize: ClassVar[float] = 1.0
    random_start: bool = param(False, FLAG)

    def foolbox(self) -> fb.attacks.base.FixedEpsilonAttack:
        return fb.attacks.FGSM(random_start=self.random_start)


@dataclass(frozen=True)
class LinfPGD(FixedAttack):
    """Projected gradient descent in L∞ with Foolbox's defaults (40 steps of 0.01/0.3·ε, random start)."""

    name: ClassVar[str] = "linf-pgd"
    norm: ClassVar[str] = "linf"
    steps: int = param(40, at_least(1))
    rel_stepsize: float = param(0.01 / 0.3, POSITIVE)
    random_start: bool = param(True, FLAG)

    def foolbox(self) -> fb.attacks.base.FixedEpsilonAttack:
        return fb.attacks.LinfPGD(rel_stepsize=self.rel_stepsize, steps=self.steps,
                                  random_start=self.random_start)


@dataclass(frozen=True)
class L2PGD(FixedAttack):
    """Projected gradient descent in L2 with Foolbox's defaults (50 steps of 0.025·ε, random start)."""

    name: ClassVar[str] = "l2-pgd"
    norm: ClassVar[str] = "l2"
    steps: int = param(50, at_least(1))
    rel_stepsize: float = param(0.025, POSITIVE)
    random_start: bool = param(True, FLAG)

    def foolbox(self) -> fb.attacks.base.FixedEpsilonAttack:
        return fb.attacks.L2PGD(rel_stepsize=self.rel_stepsize, steps=self.steps,
                                random_start=self.random_start)
