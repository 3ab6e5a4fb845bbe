"""AutoAttack (Croce & Hein, ICML 2020) at a fixed ε: APGD-CE, APGD-T, FAB-T, Square, and the standard ensemble.

The reference engine is the official code (PyPI's pyautoattack 0.2.0), with the settings its `standard` version
gives each attack. The native engine runs APGD-CE and APGD-T on labelflip's kernel (`apgd.py`); FAB-T and Square
run through the official code in both engines. The ensemble runs its components in the official order, each on the
images still robust; per image, the first successful adversarial counts, and which component found it is recorded.

pyautoattack attacks inputs in [0, 1]: a model with other bounds is attacked through a view that maps [0, 1] onto
them, with ε scaled alike (it scales linearly in L∞ and L2). APGD-T's targeted DLR loss uses the third and fourth
largest logits, so APGD-T needs at least four classes; targeted attacks try min(9, K − 1) target classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from .apgd import apgd, clip
from .base import AttackBase, at_least, one_of, param
from .bounds import Bounds

ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version's components, in its order
MAX_TARGETS = 9
DLR_MIN_CLASSES = 4
OFFICIAL_NORMS = {"linf": "Linf", "l2": "L2"}


class AutoAttackFamily(AttackBase):
    """An attack of the AutoAttack family: `components` run in order, each on the images still robust."""

    minimal: ClassVar[bool] = False
    reference: ClassVar[str] = "pyautoattack"
    components: ClassVar[tuple[str, ...]]
    # The standard version's settings; the single attacks make n_iter, n_restarts or n_queries a parameter.
    n_iter: ClassVar[int] = 100
    n_restarts: ClassVar[int] = 1
    n_queries: ClassVar[int] = 5000
    rho: ClassVar[float] = 0.75

    def check_classes(self, num_classes: int) -> None:
        """ConfigError if the model has too few classes for this attack's losses."""
        if "apgd-t" in self.components and num_classes < DLR_MIN_CLASSES:
            raise ConfigError(f"attack {self.name!r}: APGD-T's targeted DLR loss needs at least {DLR_MIN_CLASSES} "
                              f"classes and the model has {num_classes}; use {self.norm}-apgd-ce, "
                              f"{self.norm}-fab-t or {self.norm}-square")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, bounds: Bounds,
            native: bool, bf16: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: (adversarials within ε and the bounds, index into `components` of the component that broke
        each image, −1 where none did or the model already misclassified it)."""
        with torch.no_grad():
            logits = model(x)
        self.check_classes(logits.shape[1])
        targets = min(MAX_TARGETS, logits.shape[1] - 1)
        robust = logits.argmax(1) == y
        out, broken_by = x.clone(), torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
        official = _Official(model, self, epsilon, bounds, seed, targets)
        for index, component in enumerate(self.components):
            if not bool(robust.any()):
                break
            rows = robust.nonzero().squeeze(1)
            xs, ys = x[rows], y[rows]
            # Each component seeds torch's generator, as the official code does; forked, so the caller's stream
            # (from which the next batch's seed comes) is left where it was.
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                if native and component in ("apgd-ce", "apgd-t"):
                    adv = _native_apgd(model, xs, ys, self, epsilon, bounds, bf16, seed,
                                       targets if component == "apgd-t" else None)
                else:
                    adv = official.perturb(component, xs, ys)
            adv = clip(adv, xs, epsilon, self.norm, bounds)
            with torch.no_grad():
                broken = model(adv).argmax(1) != ys
            out[rows[broken]], broken_by[rows[broken]] = adv[broken], index
            robust[rows[broken]] = False
        return out, broken_by


def _native_apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AutoAttackFamily, epsilon: float,
                 bounds: Bounds, bf16: bool, seed: int, targets: int | None) -> torch.Tensor:
    """APGD-CE's restarts (`targets` None) or APGD-T's target classes, each run on the images still robust,
    seeded and drawn as the official code does."""
    torch.manual_seed(seed)
    out, robust = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    rounds = range(attack.n_restarts) if targets is None else range(2, targets + 2)
    for r in rounds:
        rows = robust.nonzero().squeeze(1)
        if not len(rows):
            break
        target = None
        if targets is not None:
            with torch.no_grad():
                target = model(x[rows]).sort(dim=1).indices[:, -r]
        adv, ok = apgd(model, x[rows], y[rows], epsilon=epsilon, norm=attack.norm, n_iter=attack.n_iter,
                       rho=attack.rho, bounds=bounds, bf16=bf16, target=target)
        out[rows[ok]], robust[rows[ok]] = adv[ok], False
    return out


class _ContiguousGradient(torch.autograd.Function):
    """The identity, whose backward pass hands on a contiguous gradient: pyautoattack's L2 and L1 steps `view`
    the input gradient, which a channels_last model returns channels_last for a multi-channel input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _UnitInput(nn.Module):
    """The model seen on inputs in [0, 1], as pyautoattack expects them, with contiguous input gradients."""

    def __init__(self, model: nn.Module, bounds: Bounds) -> None:
        super().__init__()
        self.model, self.lower, self.width = model, bounds.lower, bounds.upper - bounds.lower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _ContiguousGradient.apply(x)
        return self.model(x if (self.lower, self.width) == (0.0, 1.0) else self.lower + x * self.width)


class _Official:
    """pyautoattack's attack objects, configured as its `AutoAttack(version="standard")` configures them and
    called as its `run_standard_evaluation` calls them."""

    def __init__(self, model: nn.Module, attack: AutoAttackFamily, epsilon: float, bounds: Bounds, seed: int,
                 targets: int) -> None:
        from pyautoattack import AutoAttack

        self.bounds, self.seed = bounds, seed
        unit = _UnitInput(model, bounds)
        device = next(model.parameters()).device
        self.aa = AutoAttack(unit, norm=OFFICIAL_NORMS[attack.norm], eps=epsilon / (bounds.upper - bounds.lower),
                             seed=seed, version="standard", device=device)
        self.aa.logger.setLevel(logging.WARNING)
        self.aa.apgd_targeted.n_target_classes = self.aa.fab.n_target_classes = targets
        self.aa.apgd.n_restarts = attack.n_restarts
        self.aa.fab.n_iter, self.aa.square.n_queries = attack.n_iter, attack.n_queries
        for apgd_ in (self.aa.apgd, self.aa.apgd_targeted):
            # The constructor derived the step-size checkpoints from its own n_iter; these follow the attack's.
            apgd_.n_iter = apgd_.n_iter_orig = attack.n_iter
            apgd_.n_iter_2 = max(int(0.22 * attack.n_iter), 1)
            apgd_.n_iter_min = max(int(0.06 * attack.n_iter), 1)
            apgd_.size_decr = max(int(0.03 * attack.n_iter), 1)

    def perturb(self, component: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lower, width = self.bounds.lower, self.bounds.upper - self.bounds.lower
        # Contiguous: Square's L2 and L1 start from zeros_like(x), which keeps a channels_last layout, and `view` it.
        unit = ((x - lower) / width).contiguous()
        with torch.no_grad():  # as the official evaluation calls them: each enables gradients where it needs them
            adv = self._perturb(component, unit, y)
        return lower + adv.detach() * width

    def _perturb(self, component: str, unit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aa = self.aa
        if component == "apgd-ce":
            aa.apgd.loss, aa.apgd.seed = "ce", self.seed
            return aa.apgd.perturb(unit, y)
        elif component == "apgd-t":
            aa.apgd_targeted.seed = self.seed
            return aa.apgd_targeted.perturb(unit, y)
        elif component == "fab-t":
            aa.fab.targeted, aa.fab.n_restarts, aa.fab.seed = True, 1, self.seed
            return aa.fab.perturb(unit, y)
        aa.square.seed = self.seed
        return aa.square.perturb(unit, y)


ITERATIONS = param(100, at_least(1))


@dataclass(frozen=True)
class _APGDCE(AutoAttackFamily):
    """APGD on the cross-entropy loss, the ensemble's first attack (one restart of 100 steps)."""

    components: ClassVar[tuple[str, ...]] = ("apgd-ce",)
    native_kernel: ClassVar[bool] = True
    n_iter: int = ITERATIONS
    n_restarts: int = param(1, at_least(1))


@dataclass(frozen=True)
class _APGDT(AutoAttackFamily):
    """APGD on the targeted DLR loss, towards each of the min(9, K − 1) most likely other classes in turn."""

    components: ClassVar[tuple[str, ...]] = ("apgd-t",)
    native_kernel: ClassVar[bool] = True
    n_iter: int = ITERATIONS


@dataclass(frozen=True)
class _FABT(AutoAttackFamily):
    """Targeted FAB: minimal-norm steps towards each of the min(9, K − 1) most likely other classes."""

    components: ClassVar[tuple[str, ...]] = ("fab-t",)
    n_iter: int = ITERATIONS


@dataclass(frozen=True)
class _Square(AutoAttackFamily):
    """Square: random search in squares of shrinking size, without gradients."""

    components: ClassVar[tuple[str, ...]] = ("square",)
    n_queries: int = param(5000, at_least(1))


@dataclass(frozen=True)
class _AutoAttack(AutoAttackFamily):
    """The standard ensemble: APGD-CE, APGD-T, FAB-T and Square with the official settings."""

    components: ClassVar[tuple[str, ...]] = ORDER
    native_kernel: ClassVar[bool] = True
    version: str = param("standard", one_of("standard"))


@dataclass(frozen=True)
class LinfAPGDCE(_APGDCE):
    name: ClassVar[str] = "linf-apgd-ce"
    norm: ClassVar[str] = "linf"


@dataclass(frozen=True)
class L2APGDCE(_APGDCE):
    name: ClassVar[str] = "l2-apgd-ce"
    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class LinfAPGDT(_APGDT):
    name: ClassVar[str] = "linf-apgd-t"
    norm: ClassVar[str] = "linf"


@dataclass(frozen=True)
class L2APGDT(_APGDT):
    name: ClassVar[str] = "l2-apgd-t"
    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class LinfFABT(_FABT):
    name: ClassVar[str] = "linf-fab-t"
    norm: ClassVar[str] = "linf"


@dataclass(frozen=True)
class L2FABT(_FABT):
    name: ClassVar[str] = "l2-fab-t"
    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class LinfSquare(_Square):
    name: ClassVar[str] = "linf-square"
    norm: ClassVar[str] = "linf"


@dataclass(frozen=True)
class L2Square(_Square):
    name: ClassVar[str] = "l2-square"
    norm: ClassVar[str] = "l2"


@dataclass(frozen=True)
class LinfAutoAttack(_AutoAttack):
    name: ClassVar[str] = "linf-autoattack"
    norm: ClassVar[str] = "linf"


@dataclass(frozen=True)
class L2AutoAttack(_AutoAttack):
    name: ClassVar[str] = "l2-autoattack"
    norm: ClassVar[str] = "l2"


AUTOATTACKS = (LinfAPGDCE, L2APGDCE, LinfAPGDT, L2APGDT, LinfFABT, L2FABT, LinfSquare, L2Square,
               LinfAutoAttack, L2AutoAttack)
