"""Do two runs of an attack on the same images agree? Paired statistics for comparing attack engines.

The runs share their images, so the comparison is paired: McNemar's exact test asks whether one run flips
images out of their class more often than the other, the Stuart-Maxwell test whether the classes images land in
are distributed differently (the flip matrix's columns), and a Wilson bound caps how often the two runs disagree
about single images. Single images are expected to disagree now and then: an adversarial near a decision boundary
lands elsewhere after any tiny change of the gradient, such as bf16 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, chi2

from .stats import one_sided_wilson


@dataclass(frozen=True)
class Agreement:
    n: int
    disagree: int  # images whose adversarial lands in a different class in the two runs
    disagree_upper: float  # one-sided upper confidence bound of the disagreement rate
    only_a: int  # images flipped by run a but not by run b
    only_b: int
    mcnemar_p: float  # two-sided exact McNemar p-value for "both runs flip equally often"
    marginal_p: float  # Stuart-Maxwell p-value for "images land in each class equally often in both runs"


def paired_agreement(labels: np.ndarray, landed_a: np.ndarray, landed_b: np.ndarray,
                     confidence: float = 0.99) -> Agreement:
    labels, landed_a, landed_b = map(np.asarray, (labels, landed_a, landed_b))
    if not labels.shape == landed_a.shape == landed_b.shape or labels.ndim != 1:
        raise ValueError(f"labels and both runs' classes need one shape, got {labels.shape}, {landed_a.shape}, "
                         f"{landed_b.shape}")
    n = len(labels)
    disagree = int((landed_a != landed_b).sum())
    flipped_a, flipped_b = landed_a != labels, landed_b != labels
    only_a, only_b = int((flipped_a & ~flipped_b).sum()), int((flipped_b & ~flipped_a).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    upper = float(one_sided_wilson(disagree, n, confidence, "upper")) if n else 1.0
    return Agreement(n, disagree, upper, only_a, only_b, float(p), stuart_maxwell_p(landed_a, landed_b))


def stuart_maxwell_p(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of the Stuart-Maxwell test of marginal homogeneity for paired categorical outcomes `a`, `b`."""
    classes = np.union1d(a, b)
    if len(classes) < 2:
        return 1.0
    table = np.zeros((len(classes), len(classes)))
    np.add.at(table, (np.searchsorted(classes, a), np.searchsorted(classes, b)), 1)
    d = table.sum(1) - table.sum(0)
    cov = -(table + table.T)
    np.fill_diagonal(cov, table.sum(1) + table.sum(0) - 2 * np.diag(table))
    # The K differences sum to zero, so the covariance has rank <= K-1; the pseudo-inverse handles that and
    # classes no image changed to or from.
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return 1.0
    stat = float(d @ np.linalg.pinv(cov) @ d)
    return float(chi2.sf(stat, rank))
