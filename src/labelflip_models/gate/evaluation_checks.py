"""Whether a profile's attacks evaluated the model, judged from the runs the gate already holds, image by image
(Carlini et al. 2019, "On Evaluating Adversarial Robustness", section 5: "verify that iterative attacks perform
better than single-step attacks", "verify that increasing the distortion bound increases attack success"):

- monotone in ε: no class's robust accuracy rises significantly from one of an attack's ε to the next larger;
- iterative covers single-step: the images FGSM breaks, the iterative L∞ attack at the same ε breaks too, all but a
  measured small share;
- a large ε breaks everything: a separate cheap probe, L∞ PGD at half the pixel range without a random start, on a
  few images per class. At that ε every image can become the same mid-grey image, so robust accuracy must fall to
  chance; a model that keeps more hides its gradients from the attack.

Either failing points at gradient masking or a broken attack (too few steps, a wrong step size): the flip rates
the gate compares would understate what an adversary does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import binom

from .decisions import ALPHA, Decision, flip_p_value, holm_tarone
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
PROBE_PER_CLASS = 10
PROBE_PARAMS = {"steps": 20, "rel_stepsize": 0.1, "random_start": False}


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
                        alpha: float = ALPHA) -> Decision:
    """L∞ PGD at ε = half the pixel range (PROBE_PARAMS) on the first PROBE_PER_CLASS test images of each class:
    fails where robust accuracy lies significantly above chance (exact one-sided binomial, p < alpha). Chance is
    the largest class's share of the probed images: all of them pushed to one grey image keep at most that class."""
    from ..attacks import make_attack, run_attack
    from ..data import balanced_subset
    from ..runs.evaluate import pixel_images

    indices = balanced_subset(data.test_labels, PROBE_PER_CLASS, data.num_classes, at_most=True)
    images, labels = pixel_images(data, indices, bounds)
    epsilon = (bounds.upper - bounds.lower) / 2
    result = run_attack(model, images, labels, make_attack("linf-pgd", **PROBE_PARAMS), epsilon, bounds=bounds,
                        seed=seed, engine=engine)
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
