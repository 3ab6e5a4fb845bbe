"""Gate profiles: which (dataset, attack, ε) cases run, with which attack settings, on which test images.

Cheap to import (no torch): the pytest plugin parameterises tests from these at collection time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.reference import REFERENCE_ARCHS

REGEN_HINT = "pytest robustness_tests --labelflip-regen --labelflip-profile {profile}"


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a profile. `epsilons=None` marks a minimal-perturbation attack (run with ε=None)."""

    attack: str
    epsilons: tuple[float, ...] | None
    # Overrides of Foolbox's defaults, as (name, value) pairs so the spec stays hashable.
    params: tuple[tuple[str, Any], ...] = ()
    # Images per class for this attack (None: the profile's); --labelflip-uncapped lifts it where it is smaller.
    per_class: int | None = None

    @property
    def minimal(self) -> bool:
        return self.epsilons is None


@dataclass(frozen=True)
class Profile:
    name: str
    datasets: tuple[str, ...]
    attacks: tuple[AttackSpec, ...]
    per_class: int | None  # images per class from the test set; None means the whole test set
    noise_samples: int  # uniform-noise images for the white-noise probe

    def spec(self, attack: str) -> AttackSpec:
        for spec in self.attacks:
            if spec.attack == attack:
                return spec
        raise ConfigError(f"profile {self.name!r} has no attack {attack!r}")

    def images_per_class(self, attack: str, uncapped: bool = False) -> int | None:
        own = self.spec(attack).per_class
        if own is None or (uncapped and (self.per_class is None or self.per_class > own)):
            return self.per_class
        return own


SMOKE_EPSILONS = (0.02, 0.05, 0.1, 0.2)
PAPER_EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# Carlini-Wagner's defaults (9 binary-search steps x 10,000 steps) take minutes per image on a CPU; 5 x 100 with
# early abort finds adversarials for every image we tried, at larger norms than the full search.
CW_SMOKE = (("binary_search_steps", 5), ("steps", 100))
# Foolbox's L∞ PGD default (40 steps of ε/30, a path of 1.3 ε) has not converged on the reference models: twice the
# steps break 7% more Fashion-MNIST images at ε = 0.02. Steps of ε/10 (a path of 4 ε) have (test_converged;
# docs/methods.md, "Evaluation checks").
PGD_CONVERGED = (("rel_stepsize", 0.1),)
# Brendel-Bethge's per-sample trust-region solver runs on the CPU (numba) whatever the device.
BB_SMOKE = (("steps", 100),)
# Attacks whose solver compiles in every process that runs them (Brendel-Bethge's numba code, tens of seconds).
# Under xdist their cases share one worker, which compiles once.
COMPILED_PER_PROCESS = ("l0-bb", "l1-bb")
# Single-step attacks from the clean image: a model's cases of one of them share its gradient at every ε when one
# process runs them (attacks/memo.py), so under xdist they share a worker.
ONE_GRADIENT = ("fgsm",)
# The paper profile caps BB to this many images per class unless --labelflip-uncapped asks for all of them.
PAPER_BB_PER_CLASS = 100
# AutoAttack's APGD-T and FAB-T try 9 target classes of 100 steps and Square 5,000 queries on every image still
# robust (10-20 s of this CPU per image): one image per class is what a smoke run affords.
AUTOATTACK_SMOKE = 1
# FGSM costs one gradient per image, so its cases afford the images per class at which the paired decision catches a
# rise of the margin + 0.10 with 80% power (docs/gate.md, "Images for equal power"; mnist-5k has 100 per class).
FGSM_SMOKE = 400
PAPER_AUTOATTACK_PER_CLASS = 100

PROFILES = {
    # A minute-long pre-commit check; also what the test that proves the gate can fail runs.
    "quick": Profile("quick", ("mnist-5k",), (
        AttackSpec("fgsm", (0.1,)), AttackSpec("linf-pgd", (0.1,), PGD_CONVERGED),
        AttackSpec("l2-deepfool", None, per_class=30),
    ), per_class=100, noise_samples=1000),
    # Sized for a warm `pytest robustness_tests -n auto` of a few minutes on a 2-core CPU. L0 Brendel-Bethge is
    # left to the paper profile: its numba solver alone compiles for tens of seconds in every process that runs it.
    "smoke": Profile("smoke", ("fashion-mnist", "mnist-5k"), (
        AttackSpec("fgsm", SMOKE_EPSILONS, per_class=FGSM_SMOKE),
        AttackSpec("linf-pgd", SMOKE_EPSILONS, PGD_CONVERGED, per_class=50),
        AttackSpec("l2-pgd", (1.0,), per_class=20),
        AttackSpec("l2-deepfool", None, per_class=10),
        AttackSpec("linf-deepfool", None, per_class=10),
        AttackSpec("l2-cw", None, CW_SMOKE, per_class=5),
        AttackSpec("l1-bb", None, BB_SMOKE, per_class=5),
        # AutoAttack on the first image of each class, what the other attacks' strength is measured against
        # (test_attack_strength); at the smaller ε most images stay robust, which costs AutoAttack its most.
        AttackSpec("linf-autoattack", (0.1, 0.2), per_class=AUTOATTACK_SMOKE),
        AttackSpec("l2-autoattack", (1.0,), per_class=AUTOATTACK_SMOKE),
    ), per_class=100, noise_samples=2000),
    # CIFAR-10 on both reference models, for a GPU machine with the real data (training them on a CPU takes hours);
    # without the data every case skips and says how to provide it.
    "cifar": Profile("cifar", ("cifar-10",), (
        AttackSpec("fgsm", SMOKE_EPSILONS),
        AttackSpec("linf-pgd", SMOKE_EPSILONS, PGD_CONVERGED),
        AttackSpec("l2-deepfool", None, per_class=20),
        AttackSpec("linf-autoattack", SMOKE_EPSILONS, per_class=20),
    ), per_class=100, noise_samples=2000),
    # The paper's grid on full test sets, meant for a GPU machine; Foolbox's default attack settings but PGD's step.
    "paper": Profile("paper", ("fashion-mnist", "mnist", "cifar-10"), (
        AttackSpec("fgsm", PAPER_EPSILONS),
        AttackSpec("linf-pgd", PAPER_EPSILONS, PGD_CONVERGED),
        AttackSpec("l2-deepfool", None),
        AttackSpec("linf-deepfool", None),
        AttackSpec("l2-cw", None),
        AttackSpec("l0-bb", None, per_class=PAPER_BB_PER_CLASS),
        AttackSpec("l1-bb", None, per_class=PAPER_BB_PER_CLASS),
        AttackSpec("linf-autoattack", PAPER_EPSILONS, per_class=PAPER_AUTOATTACK_PER_CLASS),
    ), per_class=None, noise_samples=10000),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class Case:
    profile: str
    dataset: str
    attack: str
    epsilon: float | None  # None for minimal-perturbation attacks
    # "": the dataset's default reference model (or the user's model); else another reference architecture.
    arch: str = ""

    @property
    def minimal(self) -> bool:
        return self.epsilon is None

    @property
    def stem(self) -> str:
        return f"{self.attack}-min" if self.epsilon is None else f"{self.attack}-eps{self.epsilon:g}"

    @property
    def model_key(self) -> str:
        """The dataset, plus the architecture when it is not the dataset's default: names ids and folders."""
        return f"{self.dataset}-{self.arch}" if self.arch else self.dataset

    @property
    def id(self) -> str:
        return f"{self.model_key}-{self.stem}"

    def baseline_path(self, root: Path, suffix: str) -> Path:
        # Built by hand: Path.with_suffix would treat the ".1" of "eps0.1" as a suffix.
        return Path(root) / self.profile / self.model_key / f"{self.stem}{suffix}"


# The single-step attack and the iterative attack of its norm that test_covers_single_step compares at each ε.
SINGLE_STEP, ITERATIVE = "fgsm", "linf-pgd"


def epsilon_series(profile_cases: Sequence[Case]) -> list[tuple[Case, ...]]:
    """Per model, the cases of each iterative fixed-ε attack with two ε or more, by ε: what test_monotone_in_epsilon
    compares. Single-step attacks are left out: one step of a larger ε may legitimately land back in the true class
    (docs/methods.md, "Evaluation checks")."""
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in profile_cases:
        if not c.minimal and c.attack not in ONE_GRADIENT:
            groups.setdefault((c.model_key, c.attack), []).append(c)
    return [tuple(sorted(g, key=lambda c: c.epsilon or 0.0)) for g in groups.values() if len(g) > 1]


def single_step_pairs(profile_cases: Sequence[Case]) -> list[tuple[Case, Case]]:
    """(the SINGLE_STEP case, the ITERATIVE case) of each model at each ε the profile runs both at."""
    by = {(c.model_key, c.attack, c.epsilon): c for c in profile_cases}
    return [(c, by[(c.model_key, ITERATIVE, c.epsilon)]) for c in profile_cases
            if c.attack == SINGLE_STEP and (c.model_key, ITERATIVE, c.epsilon) in by]


def iterative_series(profile_cases: Sequence[Case]) -> list[tuple[Case, ...]]:
    """Per model, the ITERATIVE attack's cases (one ε or more), by ε: what test_converged and
    test_white_box_beats_black_box choose their ε from."""
    groups: dict[str, list[Case]] = {}
    for c in profile_cases:
        if c.attack == ITERATIVE:
            groups.setdefault(c.model_key, []).append(c)
    return [tuple(sorted(g, key=lambda c: c.epsilon or 0.0)) for g in groups.values()]


def series_id(case: Case) -> str:
    """The test id of the evaluation checks over all of a model's cases of `case`'s attack."""
    return f"{case.model_key}-{case.attack}"


def step_pair_id(case: Case) -> str:
    """The test id of test_covers_single_step at `case`'s model and ε."""
    return f"{case.model_key}-eps{case.epsilon:g}"


def checked_model_id(case: Case) -> str:
    """The test id of the model checks of the model `case` attacks: one per model under test."""
    return f"{case.model_key}-model-checks"


AUTOATTACK = "autoattack"


def is_autoattack(attack: str) -> bool:
    """Whether `attack` is AutoAttack or one of its components (the reference the others are compared with)."""
    from ..attacks import make_attack
    from ..attacks.autoattack import AutoAttackFamily

    return attack.endswith(AUTOATTACK) or isinstance(make_attack(attack), AutoAttackFamily)


# The marker labelflip_cases(kind): which of the profile's cases a gate test is parameterised over.
CASE_KINDS: dict[str, Callable[[Case], bool]] = {
    "all": lambda case: True,
    "fixed": lambda case: not case.minimal,
    "minimal": lambda case: case.minimal,
    # The cases test_attack_strength compares with AutoAttack at their ε.
    "compared": lambda case: not case.minimal and not is_autoattack(case.attack),
}


def noise_scope(dataset: str) -> str:
    """The id of a dataset's white-noise probe, beside the case ids."""
    return f"{dataset}-white-noise"


def noise_baseline_path(root: Path, profile: str, dataset: str) -> Path:
    return Path(root) / profile / dataset / "white-noise.json"


def cases(profile: Profile, datasets: tuple[str, ...] | None = None, own_model: bool = False) -> list[Case]:
    """The profile's cases, optionally restricted to `datasets` (a user's model is trained on one), for every
    reference model of each dataset, or for the user's model alone (`own_model`)."""
    chosen = profile.datasets if datasets is None else datasets
    return [Case(profile.name, d, s.attack, e, arch) for d in chosen
            for arch in ("", *(() if own_model else REFERENCE_ARCHS.get(d, ())[1:]))
            for s in profile.attacks for e in (s.epsilons if s.epsilons is not None else (None,))]
