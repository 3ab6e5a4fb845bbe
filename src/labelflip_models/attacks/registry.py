"""Attacks by name, as profiles and the command line refer to them."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import ConfigError
from .autoattack import AUTOATTACKS, AutoAttackFamily
from .fixed import FGSM, L2PGD, LinfPGD
from .minimal import L0BrendelBethge, L1BrendelBethge, L2CarliniWagner, L2DeepFool, LinfDeepFool

Attack = (FGSM | LinfPGD | L2PGD | L2CarliniWagner | L0BrendelBethge | L1BrendelBethge | L2DeepFool | LinfDeepFool
          | AutoAttackFamily)
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (
    FGSM, LinfPGD, L2PGD, L2CarliniWagner, L0BrendelBethge, L1BrendelBethge, L2DeepFool, LinfDeepFool, *AUTOATTACKS)}
# Names without their norm, for `--attack autoattack --norm linf`.
FAMILIES = sorted({name.split("-", 1)[1] for name in ATTACKS if name.startswith(("linf-", "l2-", "l1-", "l0-"))})


def attack_name(name: str, norm: str | None = None) -> str:
    """The registered name of `name` in `norm`: `autoattack` in linf is `linf-autoattack`; a full name passes
    through (and must be of `norm` if one is given)."""
    if name in FAMILIES:
        if norm is None:
            raise ConfigError(f"attack {name!r} needs a norm: one of "
                              f"{', '.join(n.split('-', 1)[0] for n in ATTACKS if n.endswith('-' + name))}")
        name = f"{norm}-{name}"
    if name in ATTACKS and norm is not None and ATTACKS[name].norm != norm:
        raise ConfigError(f"attack {name!r} is an {ATTACKS[name].norm} attack, not {norm}")
    return name


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
    family = {"components": list(attack.components)} if isinstance(attack, AutoAttackFamily) else {}
    return {"name": attack.name, "norm": attack.norm, "minimal": attack.minimal, **family, **attack.settings()}
