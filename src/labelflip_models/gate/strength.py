"""Attack strength: whether a fixed-ε case's attack finds as many flips as AutoAttack at the same ε on the same
images.

A profile's flip rates are only as meaningful as its attacks are strong: an attack that misses flips AutoAttack
finds understates what an adversary at that ε does. For every fixed-ε case with an AutoAttack case of its norm at
its ε in the profile, the two runs are paired image by image (dataset test index) over the images both attacked
that the model classifies correctly, and an exact one-sided McNemar test asks whether AutoAttack flips
significantly more of them. A weak attack is reported (a warning, the report's table, the baseline's provenance),
not failed: it is a property of the profile's attack, not a regression of the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import binomtest

from ..errors import DataError
from ..runs.results import STRENGTH_FILE, STRENGTH_SCHEMA
from ..storage.atomic import atomic_write_text
from .decisions import Decision, paired_p_value
from .margins import RATE_MARGIN
from .profiles import AUTOATTACK, Case, is_autoattack

if TYPE_CHECKING:
    from .shared_runs import CaseRun

# One-sided level of the McNemar test: the gate's other per-case decisions hold false alarms at 1% as well.
STRENGTH_ALPHA = 0.01
# "As strong" means AutoAttack flips at most this share of the paired images more, shown at STRENGTH_ALPHA: the
# gate's flip-rate margin, the change in flip rate the gate tolerates anyway.
STRENGTH_MARGIN = RATE_MARGIN


class WeakAttackWarning(UserWarning):
    """A fixed-ε case's attack finds significantly fewer flips than AutoAttack at the same ε (test_attack_strength):
    a warning, not a failure, because it is a property of the profile's attack, not a regression of the model."""


def autoattack_case(case: Case) -> Case:
    """The AutoAttack case a fixed-ε case is compared with: the standard ensemble of its attack's norm, same ε."""
    from ..attacks import make_attack

    return Case(case.profile, case.dataset, f"{make_attack(case.attack).norm}-{AUTOATTACK}", case.epsilon, case.arch)


def comparison_case(case: Case, profile_cases: Sequence[Case]) -> tuple[Case | None, str]:
    """(the AutoAttack case to compare `case` with, "") or (None, why there is none) among the profile's cases."""
    if case.minimal:
        return None, f"{case.attack} is a minimal attack: there is no ε to compare at"
    if is_autoattack(case.attack):
        return None, f"{case.attack} is of the AutoAttack family, the reference the other attacks are compared with"
    against = autoattack_case(case)
    if against not in profile_cases:
        return None, (f"profile {case.profile!r} has no {against.attack} case at ε={case.epsilon:g} "
                      f"({against.id}) to compare with")
    return against, ""


def paired_positions(run: CaseRun, reference: CaseRun) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `run`, positions in `reference`) of the test images both attacked, matched by test index."""
    _, mine, theirs = np.intersect1d(run.indices.numpy(), reference.indices.numpy(), assume_unique=True,
                                     return_indices=True)
    return mine, theirs


def paired_flips(run: CaseRun, reference: CaseRun) -> tuple[np.ndarray, np.ndarray]:
    """(flipped by `run`'s attack, flipped by `reference`'s) per image both runs attacked, matched by dataset test
    index, among those the model classifies correctly in both: a misclassified image is no flip of either attack.

    The reference (AutoAttack) may have attacked a subset of the case's images (a smaller per-class cap), or a
    superset; only the images in both count."""
    mine, theirs = paired_positions(run, reference)
    labels, ref_labels = run.labels.numpy()[mine], reference.labels.numpy()[theirs]
    if not np.array_equal(labels, ref_labels):
        # Same indices, other labels: the runs were not made on the same test set.
        raise DataError(f"{run.case.id} and {reference.case.id} disagree on the labels of "
                        f"{int((labels != ref_labels).sum())} shared test images: not runs of the same data")
    correct = ((run.clean_pred.numpy()[mine] == labels) & (reference.clean_pred.numpy()[theirs] == labels))
    flipped = run.adv_pred.numpy()[mine] != labels
    ref_flipped = reference.adv_pred.numpy()[theirs] != labels
    return flipped[correct], ref_flipped[correct]


def mcnemar_p_value(missed: int, only_case: int) -> float:
    """Exact one-sided McNemar test of "the case's attack flips as many images as AutoAttack": of the b + c
    discordant images, b = flipped by AutoAttack only and c = by the case's attack only; under the null each is
    either with probability 1/2, so p = P(Binomial(b + c, 1/2) >= b). No discordant images: p = 1."""
    discordant = missed + only_case
    return 1.0 if discordant == 0 else float(binomtest(missed, discordant, 0.5, alternative="greater").pvalue)


def check_attack_strength(case_flipped: np.ndarray, autoattack_flipped: np.ndarray, attack: str = "the attack",
                          alpha: float = STRENGTH_ALPHA, margin: float = STRENGTH_MARGIN) -> Decision:
    """Whether `attack` finds significantly fewer flips than AutoAttack on the same images (paired booleans, one
    per image both attacked: paired_flips). Passes unless weak (McNemar p < alpha).

    The verdict is one of three: "weaker" (McNemar p < alpha); "as strong" where the images show that AutoAttack
    flips at most `margin` of them more (Tango's paired score test of that difference, p < alpha); otherwise "not
    shown", because too few images were compared to tell. Figures: n, case_flips, autoattack_flips, missed (flipped
    by AutoAttack only), only_case (by the case's attack only), p_value, equivalence_p, alpha, margin, verdict,
    weak."""
    mine, theirs = np.asarray(case_flipped, dtype=bool), np.asarray(autoattack_flipped, dtype=bool)
    if mine.shape != theirs.shape or mine.ndim != 1:
        raise ValueError(f"one outcome per paired image from each attack: shapes {mine.shape} and {theirs.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must lie in [0, 1), got {margin}")
    n, missed, only_case = len(mine), int((theirs & ~mine).sum()), int((mine & ~theirs).sum())
    p = mcnemar_p_value(missed, only_case)
    # H0: AutoAttack flips at least `margin` of the images more; rejecting it shows the attack as strong.
    equivalence_p = float(paired_p_value(only_case, missed, n, -margin))
    weak = p < alpha
    verdict = "weaker" if weak else "as strong" if equivalence_p < alpha else "not shown"
    flips, aa_flips = int(mine.sum()), int(theirs.sum())
    if n == 0:
        text = f"no correctly classified image attacked by both {attack} and AutoAttack: nothing to compare"
    else:
        said = {"weaker": f"weaker than AutoAttack (p={p:.2g} < {alpha:g})",
                "as strong": f"as strong as AutoAttack: AutoAttack flips at most {margin:.0%} more of the {n} "
                             f"paired images (p={equivalence_p:.2g})",
                "not shown": f"weaker or not, not shown: n={n} is too small (McNemar p={p:.2g}; as strong within "
                             f"{margin:g}: p={equivalence_p:.2g})"}[verdict]
        text = (f"{attack} flips {flips}/{n} paired images, AutoAttack {aa_flips}/{n}: {attack} misses {missed} of "
                f"AutoAttack's flips and finds {only_case} it does not: {said}")
    return Decision(not weak, text, {"n": n, "case_flips": flips, "autoattack_flips": aa_flips, "missed": missed,
                                     "only_case": only_case, "p_value": p, "equivalence_p": equivalence_p,
                                     "alpha": alpha, "margin": margin, "verdict": verdict, "weak": weak})


@dataclass(frozen=True)
class Comparison:
    """A fixed-ε case's attack against AutoAttack: the AutoAttack case and the decision, or why not compared."""

    case: Case
    against: Case | None
    decision: Decision | None
    reason: str = ""

    @property
    def weak(self) -> bool:
        return self.decision is not None and bool(self.decision.figures["weak"])

    def entry(self) -> dict[str, Any]:
        """What a baseline's provenance and the report record: the figures, or "not compared" and why."""
        if self.decision is None or self.against is None:
            return {"compared": False, "reason": self.reason}
        return {"compared": True, "autoattack_case": self.against.id, **self.decision.figures,
                "message": self.decision.message}

    def warning(self) -> WeakAttackWarning:
        """What test_attack_strength warns when the attack is weak: the case, the flips missed, p."""
        if self.decision is None or self.against is None:
            raise ValueError(f"{self.case.id} was not compared with AutoAttack: {self.reason}")
        f = self.decision.figures
        return WeakAttackWarning(
            f"{self.case.id}: {self.case.attack} misses {f['missed']} of the {f['autoattack_flips']} flips AutoAttack "
            f"({self.against.id}) finds on the same {f['n']} correctly classified images (exact one-sided McNemar "
            f"p={f['p_value']:.2g} < {f['alpha']:g}); its flip rates understate what an attack at "
            f"ε={self.case.epsilon:g} does")


def compare_with_autoattack(run: CaseRun, profile_cases: Sequence[Case], run_of: Callable[[Case], CaseRun],
                            margin: float = STRENGTH_MARGIN) -> Comparison:
    """`run`'s case against the profile's AutoAttack case at its ε (`run_of` gives that run, computing it if
    needed), or why it is not compared; `margin`: the gate's flip-rate margin, within which "as strong" holds."""
    against, reason = comparison_case(run.case, profile_cases)
    if against is None:
        return Comparison(run.case, None, None, reason)
    decision = check_attack_strength(*paired_flips(run, run_of(against)), attack=run.case.attack, margin=margin)
    return Comparison(run.case, against, decision)


def write_strength(directory: Path, comparison: Comparison) -> Path:
    """The comparison as the report reads it: `directory/attack_strength.json`, beside the case's result.json."""
    case = comparison.case
    path = Path(directory) / STRENGTH_FILE
    atomic_write_text(path, json.dumps({
        "schema": STRENGTH_SCHEMA, "case": case.id, "subject": case.model_key, "dataset": case.dataset,
        "attack": case.attack, "epsilon": case.epsilon, **comparison.entry()}, indent=1) + "\n")
    return path
