"""Do two runs of an attack on the same images agree? Paired statistics for comparing attack engines.

The runs share their images, so the comparison is paired: McNemar's exact test asks whether one run flips
images out of their class more often than the other, and a Wilson bound caps how often the two disagree about
where an image lands (which is what the flip matrix counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from .flips import one_sided_wilson


@dataclass(frozen=True)
class Agreement:
    n: int
    disagree: int  # images whose adversarial lands in a different class in the two runs
    disagree_upper: float  # one-sided upper confidence bound of the disagreement rate
    only_a: int  # images flipped by run a but not by run b
    only_b: int
    mcnemar_p: float  # two-sided exact McNemar p-value for "both runs flip equally often"


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
    return Agreement(n, disagree, upper, only_a, only_b, float(p))
