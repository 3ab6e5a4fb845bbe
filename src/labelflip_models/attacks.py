"""Fixed-ε attacks through Foolbox: one small class per attack, explicit bounds and criterion.

`run_attack` is batched and seeded; it returns raw and clipped adversarials, Foolbox's success flags,
and the class each image lands in.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import foolbox as fb
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .models import predict


@dataclass(frozen=True)
class Bounds:
    """Pixel-space input range of the model; ε is measured in the same space."""

    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise ConfigError(f"bounds need finite lower < upper, got ({self.lower}, {self.upper})")


@dataclass(frozen=True)
class FGSM:
    """Fast gradient sign method: one step of size ε (Foolbox's LinfFastGradientAttack)."""

    name: ClassVar[str] = "fgsm"
    random_start: bool = False

    def foolbox(self) -> fb.attacks.base.FixedEpsilonAttack:
        return fb.attacks.FGSM(random_start=self.random_start)


@dataclass(frozen=True)
class LinfPGD:
    """Projected gradient descent in L∞ with Foolbox's defaults (40 steps of 0.01/0.3·ε, random start)."""

    name: ClassVar[str] = "linf-pgd"
    steps: int = 40
    rel_stepsize: float = 0.01 / 0.3
    random_start: bool = True

    def foolbox(self) -> fb.attacks.base.FixedEpsilonAttack:
        return fb.attacks.LinfPGD(rel_stepsize=self.rel_stepsize, steps=self.steps,
                                  random_start=self.random_start)


Attack = FGSM | LinfPGD
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, LinfPGD)}


def make_attack(name: str, **params: Any) -> Attack:
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    return ATTACKS[name](**params)


def describe(attack: Attack) -> dict[str, Any]:
    return {"name": attack.name, "engine": f"foolbox {fb.__version__}", **asdict(attack)}


def check_epsilon(epsilon: float, bounds: Bounds) -> float:
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"epsilon must be a positive finite number, got {epsilon}")
    if epsilon > bounds.upper - bounds.lower:
        raise ConfigError(f"epsilon {epsilon} exceeds the width of the input bounds "
                          f"({bounds.lower}, {bounds.upper}); every image would be reachable")
    return epsilon


@dataclass
class AttackResult:
    epsilon: float
    images: torch.Tensor
    labels: torch.Tensor
    raw: torch.Tensor
    clipped: torch.Tensor
    success: torch.Tensor
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
    def linf_norms(self) -> torch.Tensor:
        return (self.clipped - self.images).flatten(1).abs().amax(1)


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack,
               epsilon: float, bounds: Bounds = Bounds(), batch_size: int = 256, seed: int = 0,
               progress: bool = False) -> AttackResult:
    """Attack every image on the model's device; images and labels come back on the CPU."""
    epsilon = check_epsilon(epsilon, bounds)
    if model.training:
        raise ConfigError("the model is in training mode; call model.eval() before attacking it")
    device = next(model.parameters()).device
    fmodel = fb.PyTorchModel(model, bounds=(bounds.lower, bounds.upper), device=device)
    fb_attack = attack.foolbox()
    # Random starts draw from torch's global generator; one seed per run fixes the whole sequence.
    torch.manual_seed(seed)
    raws, clips, successes = [], [], []
    start = time.perf_counter()
    for i in tqdm(range(0, len(images), batch_size), desc=f"{attack.name} ε={epsilon:g}", disable=not progress):
        x = images[i:i + batch_size].to(device)
        y = labels[i:i + batch_size].to(device)
        raw, clipped, success = fb_attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=epsilon)
        raws.append(raw.detach().cpu())
        clips.append(clipped.detach().cpu())
        successes.append(success.detach().cpu())
    seconds = time.perf_counter() - start
    clipped = torch.cat(clips)
    return AttackResult(
        epsilon=epsilon, images=images.cpu(), labels=labels.cpu(), raw=torch.cat(raws), clipped=clipped,
        success=torch.cat(successes), clean_pred=predict(model, images), adv_pred=predict(model, clipped),
        seconds=seconds,
        params={**describe(attack), "epsilon": epsilon, "bounds": [bounds.lower, bounds.upper],
                "criterion": "misclassification", "batch_size": batch_size, "seed": seed},
    )
