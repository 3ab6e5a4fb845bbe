"""Whether a profile's attacks evaluated the model, judged from the runs the gate already holds, image by image
(Carlini et al. 2019, "On Evaluating Adversarial Robustness", section 5: "verify that iterative attacks perform
better than single-step attacks", "verify that increasing the distortion bound increases attack success"):

- monotone in ε: no class's robust accuracy rises significantly from one of an attack's ε to the next larger;
- iterative covers single-step: the images FGSM breaks, the iterative L∞ attack at the same ε breaks too, all but a
  measured small share;
- a large ε breaks everything: a separate cheap probe, L∞ PGD at half the pixel range without a random start, on a
  few images per class. At that ε every image can become the same mid-grey image, so robust accuracy must fall to
  chance; a model that keeps more hides its gradients from the attack;
- converged: on a subsample of the iterative L∞ attack's images, the same attack with twice the steps from another
  random start must not break significantly more (section 5: "verify that the attack has converged");
- white box beats black box: on the same subsample, the gradient-free Square attack (Andriushchenko et al. 2020)
  must not break significantly more than the gradient attack (section 5: "black-box attacks should not outperform
  white-box attacks").

The last two rerun an attack on a few images at the one ε of the profile where the run's robust accuracy is
nearest one half: where more steps or another attack can change the most images. `one_run_checks` gives the checks
that a single run (`labelflip attack`) supports.

Either failing points at gradient masking or a broken attack (too few steps, a wrong step size): the flip rates
the gate compares would understate what an adversary does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import binom

from ..attacks.registry import ATTACKS
from .decisions import ALPHA, Decision, flip_p_value, holm_tarone
from .profiles import ITERATIVE
from .strength import paired_flips, paired_positions

if TYPE_CHECKING:
    from torch import nn

    from ..attacks import Bounds
    from ..data import Dataset
    from .shared_runs import CaseRun

# The share of the images both attacks ran on (correctly classified) that FGSM may break and the iterative attack
# miss: a chosen tolerance (FGSM's one large step may land where PGD's small steps from a random start do not). On
# the reference models PGD missed none (docs/methods.md, "Evaluation checks").
SINGLE_STEP_ONLY = 0.02


# The large-ε probe: images per class, and a PGD whose steps cover the ball twice over (20 steps of a tenth of ε)
# from the clean image: a random start at this ε would scramble the image without any gradient.
PROBE_PER_CLASS, PROBE_IMAGES = 10, 200
PROBE_PARAMS = {"steps": 20, "rel_stepsize": 0.1, "random_start": False}

# The rerun checks' subsample: the first this many correctly classified images per class of the run, at most
# RERUN_IMAGES in all (at least one per class).
RERUN_PER_CLASS, RERUN_IMAGES = 10, 200
# Square's query budget in the black-box check: a fifth of AutoAttack's, enough for Square to break most images a
# gradient attack breaks on an undefended model (docs/methods.md, "Evaluation checks").
SQUARE_QUERIES = 1000


def _robust(run: CaseRun, at: np.ndarray) -> np.ndarray:
    return run.adv_pred.numpy()[at] == run.labels.numpy()[at]


def check_monotone_in_epsilon(runs: Sequence[CaseRun], class_names: list[str], alpha: float = ALPHA) -> Decision:
    """Per class and pair of consecutive ε of one attack (`runs`, any order), an exact one-sided McNemar test of the
    paired images robust at the larger ε only (b) against those robust at the smaller only (c); Holm and Tarone
    across all of them hold the family-wise error rate at `alpha`. Fails where robust accuracy rises significantly
    with ε."""
    ordered = sorted(runs, key=lambda r: r.case.epsilon)
    tests: list[tuple[str, float, float, int, int]] = []
    for small, large in zip(ordered, ordered[1:]):
        mine, theirs = paired_positions(small, large)
        labels = small.labels.numpy()[mine]
        rises, falls = _robust(large, theirs) & ~_robust(small, mine), _robust(small, mine) & ~_robust(large, theirs)
        for c, name in enumerate(class_names):
            of = labels == c
            tests.append((name, small.case.epsilon, large.case.epsilon, int(rises[of].sum()), int(falls[of].sum())))
    if not tests:
        return Decision(True, "fewer than two ε of the attack: nothing to compare", {"comparisons": 0})
    b, c = np.array([t[3] for t in tests]), np.array([t[4] for t in tests])
    p = np.where(b + c > 0, binom.sf(b - 1, b + c, 0.5), 1.0)
    family = holm_tarone(p, 0.5 ** (b + c), alpha)
    attack = ordered[0].case.attack
    figures = {"comparisons": len(tests), "largest_rise": int(b.max()), "smallest_p": float(p.min())}
    bad = [f"{name!r} {int(bi)} images robust at ε={hi:g} but not at {lo:g}, {int(ci)} the reverse (p={pi:.2g})"
           for (name, lo, hi, bi, ci), pi, r in zip(tests, p, family.regressed) if r]
    if bad:
        return Decision(False, f"{attack}: robust accuracy rises with ε: {'; '.join(bad[:5])}: a larger budget "
                               "must not make the attack weaker (gradient masking, or the attack's step size?)",
                        figures)
    return Decision(True, f"{attack}: robust accuracy does not rise significantly with ε ({len(tests)} class and ε "
                          f"comparisons, smallest p={float(p.min()):.2g})", figures)


def check_covers_single_step(single: CaseRun, iterative: CaseRun, share: float = SINGLE_STEP_ONLY,
                             alpha: float = ALPHA) -> Decision:
    """Of the images both runs attacked and the model classifies correctly, the iterative attack must break all
    that the single-step one breaks but a `share` of them: exact one-sided binomial test of H0: the share of images
    broken by `single` only is at most `share`."""
    single_flipped, iterative_flipped = paired_flips(single, iterative)
    n, k = len(single_flipped), int((single_flipped & ~iterative_flipped).sum())
    p = float(flip_p_value(k, n, share)) if n else 1.0
    what = f"{single.case.attack} and {iterative.case.attack} at ε={single.case.epsilon:g}"
    figures = {"n": n, "single_step_only": k, "share": k / n if n else None, "allowed": share, "p_value": p}
    if p < alpha:
        return Decision(False, f"{what}: {k} of {n} paired images broken by {single.case.attack} but not by "
                               f"{iterative.case.attack} (more than {share:.0%}, p={p:.2g}): the iterative attack is "
                               "not finding what one step finds (too few steps or too small a step, or gradient "
                               "masking)", figures)
    return Decision(True, f"{what}: {k} of {n} paired images broken by {single.case.attack} only (p={p:.2g})",
                    figures)


def large_epsilon_probe(model: nn.Module, data: Dataset, bounds: Bounds, seed: int = 0, engine: str = "auto",
                        alpha: float = ALPHA, batch_size: int | None = None) -> Decision:
    """L∞ PGD at ε = half the pixel range (PROBE_PARAMS) on the first PROBE_PER_CLASS test images of each class
    (fewer per class when K is large: PROBE_IMAGES in all, at least one per class, of the first classes beyond):
    fails where robust accuracy lies significantly above chance (exact one-sided binomial, p < alpha). Chance is
    the largest class's share of the probed images: all of them pushed to one grey image keep at most that class."""
    from ..attacks import make_attack, run_attack
    from ..attacks.engine import engine_where_it_applies
    from ..data import balanced_subset
    from ..runs.evaluate import pixel_images

    per_class = max(1, min(PROBE_PER_CLASS, PROBE_IMAGES // data.num_classes))
    indices = balanced_subset(data.test_labels, per_class, data.num_classes, at_most=True)[:PROBE_IMAGES]
    images, labels = pixel_images(data, indices, bounds)
    epsilon = (bounds.upper - bounds.lower) / 2
    pgd = make_attack("linf-pgd", **PROBE_PARAMS)
    result = run_attack(model, images, labels, pgd, epsilon, bounds=bounds, seed=seed, batch_size=batch_size,
                        engine=engine_where_it_applies(engine, pgd.native_kernel))
    n, robust = len(labels), int((result.adv_pred == result.labels).sum())
    chance = float(torch.bincount(labels).max()) / n
    p = float(flip_p_value(robust, n, chance))
    figures = {"n": n, "robust": robust, "epsilon": epsilon, "chance": chance, "p_value": p}
    if p < alpha:
        return Decision(False, f"L∞ PGD at ε={epsilon:g} (half the pixel range, where any image can become the same "
                               f"grey one) leaves {robust} of {n} images in their class, above chance {chance:.2f} "
                               f"(p={p:.2g}): the model hides its gradients from the attacks (non-differentiable "
                               "preprocessing, or logits so large that the cross-entropy saturates), so its flip "
                               "rates understate what an adversary does", figures)
    return Decision(True, f"L∞ PGD at ε={epsilon:g} leaves {robust} of {n} images in their class (chance "
                          f"{chance:.2f})", figures)


def most_informative(runs: Sequence[CaseRun]) -> CaseRun:
    """Of one attack's runs at several ε, the one whose robust accuracy (among the correctly classified images) is
    nearest one half; ties go to the smaller ε."""
    def distance(run: CaseRun) -> tuple[float, float]:
        correct = run.clean_pred == run.labels
        robust = float((correct & (run.adv_pred == run.labels)).sum()) / max(int(correct.sum()), 1)
        return abs(robust - 0.5), run.case.epsilon or 0.0

    return min(runs, key=distance)


def rerun_positions(run: CaseRun, num_classes: int) -> np.ndarray:
    """Positions in `run` of the first RERUN_PER_CLASS correctly classified images of each class (fewer per class
    when K is large: RERUN_IMAGES in all, or one per class beyond RERUN_IMAGES classes)."""
    per_class = max(1, min(RERUN_PER_CLASS, RERUN_IMAGES // num_classes))
    labels = run.labels.numpy()
    correct = np.flatnonzero(run.clean_pred.numpy() == labels)
    return np.sort(np.concatenate([correct[labels[correct] == c][:per_class] for c in range(num_classes)]))


def _rerun(run: CaseRun, positions: np.ndarray, model: nn.Module, data: Dataset, bounds: Bounds, attack: str,
           params: dict[str, Any], seed: int, engine: str, batch_size: int | None = None) -> np.ndarray:
    """Whether `attack` (with `params`) at the run's ε breaks each image at `positions` of the run."""
    from ..attacks import make_attack, run_attack
    from ..attacks.engine import engine_where_it_applies
    from ..runs.evaluate import pixel_images

    indices = run.indices.numpy()[positions]
    images, labels = pixel_images(data, indices, bounds)
    chosen = make_attack(attack, **params)
    result = run_attack(model, images, labels, chosen, run.result["attack"]["epsilon"], bounds=bounds, seed=seed,
                        engine=engine_where_it_applies(engine, chosen.native_kernel), ids=torch.as_tensor(indices),
                        batch_size=batch_size)
    return (result.adv_pred != result.labels).numpy()


def _more_found(run: CaseRun, positions: np.ndarray, other: np.ndarray) -> tuple[int, int, float]:
    """(b, c, p): images at `positions` broken by the other attack only (b) and by the run only (c), and the exact
    one-sided McNemar p-value of "the other attack breaks no more than the run"."""
    broken = (run.adv_pred.numpy() != run.labels.numpy())[positions]
    b, c = int((other & ~broken).sum()), int((broken & ~other).sum())
    return b, c, float(binom.sf(b - 1, b + c, 0.5)) if b + c else 1.0


def check_converged(runs: Sequence[CaseRun], model: nn.Module, data: Dataset, bounds: Bounds, seed: int = 0,
                    engine: str = "auto", alpha: float = ALPHA, batch_size: int | None = None) -> Decision:
    """On rerun_positions of the most informative of an iterative attack's `runs`, the same attack (its profile's
    settings) with twice the steps from another random start (seed + 1) must not break significantly more images
    (exact one-sided McNemar, p < alpha): otherwise the run's flip rates stop short of what its attack can do."""
    run = most_informative(runs)
    positions = rerun_positions(run, data.num_classes)
    if not len(positions):
        return Decision(True, f"{run.case.attack}: no correctly classified image to rerun", {"n": 0})
    # The run's own settings, which a run stored by an earlier version may hold rather than the profile's.
    params = {f.name: run.result["attack"][f.name] for f in fields(ATTACKS[run.case.attack])}
    steps = params["steps"]
    longer = _rerun(run, positions, model, data, bounds, run.case.attack, {**params, "steps": 2 * steps}, seed + 1,
                    engine, batch_size)
    b, c, p = _more_found(run, positions, longer)
    what = f"{run.case.attack} at ε={run.case.epsilon:g}"
    figures = {"epsilon": run.case.epsilon, "n": len(positions), "steps": steps, "only_longer": b, "only_run": c,
               "p_value": p}
    if p < alpha:
        return Decision(False, f"{what}: with {2 * steps} steps instead of {steps} it breaks {b} of "
                               f"{len(positions)} images the run did not, and misses {c} it broke (p={p:.2g}): the "
                               "attack has not converged; give it more steps or a larger step (steps, rel_stepsize)",
                        figures)
    return Decision(True, f"{what}: {2 * steps} steps instead of {steps} break {b} more and {c} fewer of "
                          f"{len(positions)} images (p={p:.2g})", figures)


def check_white_box_beats_black_box(runs: Sequence[CaseRun], model: nn.Module, data: Dataset, bounds: Bounds,
                                    seed: int = 0, engine: str = "auto", alpha: float = ALPHA,
                                    batch_size: int | None = None) -> Decision:
    """On rerun_positions of the most informative of an L∞ gradient attack's `runs`, L∞ Square (SQUARE_QUERIES
    queries, no gradients) must not break significantly more images than the gradient attack (exact one-sided
    McNemar, p < alpha): where it does, the model hides its gradients from the gradient attacks."""
    run = most_informative(runs)
    positions = rerun_positions(run, data.num_classes)
    if not len(positions):
        return Decision(True, f"{run.case.attack}: no correctly classified image to rerun", {"n": 0})
    square = _rerun(run, positions, model, data, bounds, "linf-square", {"n_queries": SQUARE_QUERIES}, seed, engine,
                    batch_size)
    b, c, p = _more_found(run, positions, square)
    what = f"{run.case.attack} and L∞ Square at ε={run.case.epsilon:g}"
    figures = {"epsilon": run.case.epsilon, "n": len(positions), "queries": SQUARE_QUERIES, "only_black_box": b,
               "only_white_box": c, "p_value": p}
    if p < alpha:
        return Decision(False, f"{what}: Square, which uses no gradients, breaks {b} of {len(positions)} images "
                               f"{run.case.attack} did not, and misses {c} it broke (p={p:.2g}): the model hides its "
                               "gradients (non-differentiable preprocessing, saturated outputs), so the gradient "
                               "attacks' flip rates understate what an adversary does", figures)
    return Decision(True, f"{what}: Square breaks {b} images {run.case.attack} did not, {run.case.attack} {c} that "
                          f"Square did not, of {len(positions)} (p={p:.2g})", figures)


def one_run_checks(run: CaseRun, model: nn.Module, data: Dataset, bounds: Bounds, *, seed: int = 0,
                   engine: str = "auto", batch_size: int | None = None,
                   single_step: Callable[[], CaseRun] | None = None) -> dict[str, Decision]:
    """The evaluation checks one run supports, by the names gate/session.EVALUATION_TESTS gives them: the large-ε
    probe for any run; for a fixed-ε run of the ITERATIVE attack also converged and white box beats black box at
    its ε, and covers single-step when `single_step` gives the SINGLE_STEP attack's run on the same images (called
    only then). Monotone in ε needs runs at several ε: only the gate has them."""
    checks = {"large_epsilon": large_epsilon_probe(model, data, bounds, seed=seed, engine=engine,
                                                   batch_size=batch_size)}
    if run.case.attack != ITERATIVE or run.case.minimal:
        return checks
    options = {"seed": seed, "engine": engine, "batch_size": batch_size}
    checks["converged"] = check_converged([run], model, data, bounds, **options)
    checks["white_box_beats_black_box"] = check_white_box_beats_black_box([run], model, data, bounds, **options)
    if single_step is not None:
        checks["covers_single_step"] = check_covers_single_step(single_step(), run)
    return checks
