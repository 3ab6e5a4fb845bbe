"""Adversarial attacks through Foolbox, with explicit bounds and a misclassification criterion.

Fixed-ε attacks (FGSM, L∞/L2 PGD) look for an adversarial within ε; minimal attacks (Carlini-Wagner,
Brendel-Bethge, DeepFool) look for the smallest one they can. `run_attack` runs either kind, batched and seeded.
"""

from .bounds import NORMS, Bounds, check_epsilon, check_epsilon_for
from .fixed import FGSM, L2PGD, LinfPGD
from .minimal import L0BrendelBethge, L1BrendelBethge, L2CarliniWagner, L2DeepFool, LinfDeepFool
from .registry import ATTACKS, Attack, describe, make_attack
from .result import AttackResult
from .run import run_attack

__all__ = [
    "ATTACKS", "FGSM", "NORMS", "Attack", "AttackResult", "Bounds", "L0BrendelBethge", "L1BrendelBethge",
    "L2CarliniWagner", "L2DeepFool", "L2PGD", "LinfDeepFool", "LinfPGD", "check_epsilon", "check_epsilon_for",
    "describe", "make_attack", "run_attack",
]
