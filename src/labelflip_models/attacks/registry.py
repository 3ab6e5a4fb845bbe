"""Attacks by name, as profiles and the command line refer to them."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import ConfigError
from .fixed import FGSM, L2PGD, LinfPGD
from .minimal import L0BrendelBethge, L1BrendelBethge, L2CarliniWagner, L2DeepFool, LinfDeepFool

Attack = FGSM | LinfPGD | L2PGD | L2CarliniWagner | L0BrendelBethge | L1BrendelBethge | L2DeepFool | LinfDeepFool
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    FGSM, LinfPGD, L2PGD, L2CarliniWagner, L0BrendelBethge, L1BrendelBethge, L2DeepFool, LinfDeepFool)}


def make_attack(name: str, **params: Any) -> Attack:
    """The attack called `name`, with `params` overriding Foolbox's defaults."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    cls = ATTACKS[name]
    known = [f.name for f in fields(cls)]
    unknown = [p for p in params if p not in known]
    if unknown:
        raise ConfigError(f"attack {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters are: {', '.join(known)}")
    return cls(**params)


def describe(attack: Attack) -> dict[str, Any]:
    """JSON-ready identity and settings of an attack, for result files."""
    return {"name": attack.name, "norm": attack.norm, "minimal": attack.minimal, **attack.settings()}
