"""Adversarial starting points for Brendel-Bethge, which only walks along the boundary from one.

Foolbox's own initialisation (blended uniform noise) aborts the whole batch with an AssertionError as soon
as it fails on a single input. Instead, cheaper attacks propose starting points and the inputs they cannot
solve are reported back, so the caller can record them as failures and attack the rest.
"""

from __future__ import annotations

import foolbox as fb
import torch
from foolbox.criteria import Misclassification

STRATEGY = "l2-deepfool, then linf-pgd with ε = bounds width for the inputs deepfool leaves unsolved"


def starting_points(fmodel: fb.PyTorchModel, x: torch.Tensor, y: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(points, found): points[found] are misclassified versions of x[found]; the rest have none."""
    points, _, found = fb.attacks.L2DeepFoolAttack()(fmodel, x, Misclassification(y), epsilons=None)
    rest = ~found
    if rest.any():
        # ε = width lets PGD move every pixel anywhere: the best chance of some adversarial, however far.
        lower, upper = fmodel.bounds
        _, pgd, ok = fb.attacks.LinfPGD()(fmodel, x[rest], Misclassification(y[rest]), epsilons=upper - lower)
        points[rest], found[rest] = pgd, ok
    return points, _confirmed(fmodel, points, y, found)


def _confirmed(fmodel: fb.PyTorchModel, points: torch.Tensor, y: torch.Tensor, found: torch.Tensor,
               ) -> torch.Tensor:
    """`found` narrowed until the model misclassifies all of points[found] when given exactly that batch.

    Brendel-Bethge asserts this on that batch; a point on the decision boundary could pass in one batch
    composition and fail in another, and a single failure would abort the attack on every input.
    """
    found = found.clone()
    while found.any():
        index = found.nonzero().squeeze(1)
        with torch.no_grad():
            wrong = fmodel(points[index]).argmax(1) != y[index]
        if wrong.all():
            break
        found[index[~wrong]] = False
    return found
