"""Running a gate case: the profile's images of its dataset, attacked at the case's budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..attacks import AttackResult, Bounds, make_attack
from ..attacks.engine import engine_where_it_applies
from ..attacks.memo import Memo
from ..attacks.registry import Attack
from ..data import Dataset, balanced_subset
from ..runs.distributed import World
from ..runs.evaluate import attack_images
from .profiles import Case, Profile, get_profile
from .shared_runs import CaseRun


def select(profile: Profile, data: Dataset, attack: str, uncapped: bool = False) -> tuple[np.ndarray, str]:
    """The test images a profile attacks with `attack`, and how to say which they are."""
    per_class = profile.images_per_class(attack, uncapped)
    if per_class is None:
        return np.arange(len(data.test_labels)), "whole test set"
    # A class with fewer test images gives all it has; the gate reports a class too small to gate.
    short = bool((np.bincount(data.test_labels, minlength=data.num_classes) < per_class).any())
    indices = balanced_subset(data.test_labels, per_class, data.num_classes, at_most=True)
    return indices, f"first {'up to ' if short else ''}{per_class} test images of each class"


def case_images(case: Case, data: Dataset, uncapped: bool = False) -> tuple[np.ndarray, str]:
    """The test images `case` attacks (indices into the test set) and how to say which: run_case attacks these,
    and the gate pairs two cases' images by them (gate/strength.py)."""
    return select(get_profile(case.profile), data, case.attack, uncapped)


def case_attack(case: Case) -> Attack:
    """The attack `case` runs, with its profile's settings."""
    return make_attack(case.attack, **dict(get_profile(case.profile).spec(case.attack).params))


def run_case(case: Case, data: Dataset, model: nn.Module, model_info: dict[str, Any], seed: int,
             bounds: Bounds = Bounds(), uncapped: bool = False, engine: str = "auto", *, world: World = World(),
             scratch: Path | None = None, batch_size: int | None = None,
             memo: Memo | None = None) -> tuple[dict[str, Any], AttackResult] | None:
    """Attack the case's images; return result.json's content and the adversarials (on rank 0 of `world`; None
    on the others, which attack their shard: runs/distributed.py).

    Profile ε are fractions of the pixel range (the paper's [0, 1] scale); the recorded ε is in the model's units.
    The images attacked are case_images(case, data, uncapped), in that order.
    """
    indices, selection = case_images(case, data, uncapped)
    attack = case_attack(case)
    epsilon = None if case.epsilon is None else case.epsilon * (bounds.upper - bounds.lower)
    return attack_images(data, model, model_info, indices, selection, attack, epsilon, bounds=bounds, seed=seed,
                         engine=engine_where_it_applies(engine, attack.native_kernel), world=world, scratch=scratch,
                         batch_size=batch_size, memo=memo)


def compute_case(case: Case, data: Dataset, model: nn.Module, model_info: dict[str, Any], seed: int,
                 bounds: Bounds = Bounds(), uncapped: bool = False, engine: str = "auto", *,
                 world: World = World(), scratch: Path | None = None, batch_size: int | None = None,
                 memo: Memo | None = None) -> CaseRun | None:
    """The case's run as the gate tests check it: the one way a case is computed, in a pytest session or by
    `labelflip run` (None on ranks other than 0). `memo`: the model's (attacks/memo.py), shared by its cases."""
    out = run_case(case, data, model, model_info, seed, bounds, uncapped, engine, world=world, scratch=scratch,
                   batch_size=batch_size, memo=memo)
    if out is None:
        return None
    result, attacked = out
    return CaseRun.from_attack(case, result, attacked, case_images(case, data, uncapped)[0])
