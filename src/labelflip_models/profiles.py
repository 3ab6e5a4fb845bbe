"""Gate profiles: which (dataset, attack, ε) cases run, on which test images. Cheap to import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

REGEN_HINT = "pytest robustness_tests --labelflip-regen --labelflip-profile {profile}"


@dataclass(frozen=True)
class Profile:
    name: str
    datasets: tuple[str, ...]
    attacks: tuple[str, ...]
    epsilons: tuple[float, ...]
    per_class: int | None  # images per class from the test set; None means the whole test set


PROFILES = {
    # A minute-long pre-commit check; also what the test that proves the gate can fail runs.
    "quick": Profile("quick", ("mnist-5k",), ("fgsm", "linf-pgd"), (0.1,), 100),
    "smoke": Profile("smoke", ("fashion-mnist", "mnist-5k"), ("fgsm", "linf-pgd"), (0.02, 0.05, 0.1, 0.2), 100),
    "paper": Profile("paper", ("fashion-mnist", "mnist"), ("fgsm", "linf-pgd"),
                     (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0), None),
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
    epsilon: float

    @property
    def id(self) -> str:
        return f"{self.dataset}-{self.attack}-eps{self.epsilon:g}"

    def baseline_path(self, root: Path, suffix: str) -> Path:
        # Built by hand: Path.with_suffix would treat the ".1" of "eps0.1" as a suffix.
        return Path(root) / self.profile / self.dataset / f"{self.attack}-eps{self.epsilon:g}{suffix}"


def cases(profile: Profile) -> list[Case]:
    return [Case(profile.name, d, a, e) for d in profile.datasets for a in profile.attacks for e in profile.epsilons]
