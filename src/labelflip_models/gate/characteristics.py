"""The gate's own operating characteristics, by simulation: how often it fails an unchanged model (false alarms per
run of a case), and how large a rise of one class's flip rate it catches with 80% probability.

Unpaired (`table`): each repetition draws a baseline run (a flip count per class ~ Binomial(n, rate)), derives the
thresholds exactly as make_baseline does (flip_rate_threshold), draws a rerun, and decides with family_test, the
same code check_flip_rates runs, without a margin: the procedure's own error rates.

Paired (`margin_table`): each repetition draws every image's baseline outcome, then the rerun's: an image keeps its
outcome except that a share `churn` of them is drawn afresh at the class's rate (what another seed or a retrain
does without changing the rate), and class 0's unflipped images flip with the probability that raises its rate by
the increase. Decided with paired_family_test at the default margin, beside family_test with the same margin on
the same counts; and (`equal_power_table`) the images per class each needs to catch a rise of the margin + 0.10 with
80% power, which sizes the smoke profile's FGSM cases. `python -m labelflip_models.gate.characteristics` prints the
three tables of docs/gate.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import beta, binom

from ..analysis.stats import wilson_interval
from .baselines import flip_rate_threshold
from .decisions import GATE_CONFIDENCE, Pairs, family_test, paired_family_test
from .margins import RATE_MARGIN

ALPHA = 1 - GATE_CONFIDENCE
# Repetitions of the table: enough that a false-alarm rate near α would show (its 95% interval then spans about
# ±0.4 points) and that the 80%-power increase varies by under 0.01 between seeds, at about ten seconds for the
# whole table on two cores.
FALSE_ALARM_REPS = 2000
POWER_REPS = 400
# Realistic images per class for a case of K classes, and the baseline rates: two fixed ones and a spread.
SIZES = ((10, 100), (10, 1000), (100, 100), (1000, 50))
SPREAD = beta(2, 5)


def _draw(k: int, n: int, rates: np.ndarray | float, reps: int, rng: np.random.Generator,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Per rep and class, the baseline's threshold and an unchanged rerun's flip count."""
    rates = np.broadcast_to(np.asarray(rates, dtype=float), (k,))
    thresholds = flip_rate_threshold(rng.binomial(n, rates, size=(reps, k)), n)
    return thresholds, rng.binomial(n, rates, size=(reps, k))


def count_false_alarms(k: int, n: int, rates: np.ndarray | float, reps: int, seed: int) -> int:
    """Of `reps` reruns of an unchanged model, how many fail the case (any of its `k` classes regressed)."""
    thresholds, rerun = _draw(k, n, rates, reps, np.random.default_rng(seed))
    return int(family_test(rerun, n, thresholds, ALPHA).regressed.any(axis=-1).sum())


def false_alarm_rate(k: int, n: int, rates: np.ndarray | float, reps: int, seed: int) -> float:
    """The probability that an unchanged model fails a case of `k` classes of `n` images each (per-class flip
    rates `rates`), estimated from `reps` repetitions; its Wilson interval: count_false_alarms and wilson_interval."""
    return count_false_alarms(k, n, rates, reps, seed) / reps


def _critical_counts(k: int, n: int, rates: np.ndarray | float, reps: int, seed: int) -> np.ndarray:
    """Per rep, the smallest rerun count of class 0 the gate flags, the other classes' reruns unchanged (n + 1 where
    none does). Flagging is monotone in that count (a smaller p-value never undoes a Holm rejection), so bisection
    finds it in log2(n) decisions of all reps at once."""
    thresholds, rerun = _draw(k, n, rates, reps, np.random.default_rng(seed))
    rows = np.arange(reps)
    lo, hi = np.full(reps, -1), np.full(reps, n + 1)  # lo is never flagged, hi is (or is the sentinel n + 1)
    while np.any(open_ := hi - lo > 1):
        r = rows[open_]
        mid = (lo[r] + hi[r]) // 2
        rerun[r, 0] = mid
        flagged = family_test(rerun[r], n, thresholds[r], ALPHA).regressed[:, 0]
        hi[r] = np.where(flagged, mid, hi[r])
        lo[r] = np.where(flagged, lo[r], mid)
    return hi


def _power(critical: np.ndarray, n: int, rate: float) -> float:
    # The exact probability over class 0's rerun given each rep's baseline and other classes, averaged over reps:
    # less noisy than drawing that rerun, and smooth in the rate, so a root finder can invert it.
    return float(np.mean(binom.sf(critical - 1, n, min(rate, 1.0))))


def _first_rate(rates: np.ndarray | float) -> float:
    return float(np.ravel(rates)[0])


def power(k: int, n: int, rates: np.ndarray | float, increase: float, reps: int, seed: int) -> float:
    """The probability that the gate flags class 0 when its true flip rate rises from its baseline rate
    (`rates`, or rates[0]) by `increase` while the other k − 1 classes stay unchanged."""
    return _power(_critical_counts(k, n, rates, reps, seed), n, _first_rate(rates) + increase)


def min_detectable_increase(k: int, n: int, rates: np.ndarray | float, power: float = 0.8, reps: int = POWER_REPS,
                            seed: int = 0) -> float:
    """The smallest rise of class 0's flip rate that the gate flags with probability `power` (NaN: not even a rise
    to rate 1 is)."""
    critical, start = _critical_counts(k, n, rates, reps, seed), _first_rate(rates)
    if _power(critical, n, 1.0) < power:
        return float("nan")
    return float(brentq(lambda d: _power(critical, n, start + d) - power, 0.0, 1.0 - start, xtol=1e-4))


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def table(reps: int = FALSE_ALARM_REPS, power_reps: int = POWER_REPS, seed: int = 0) -> str:
    """The Markdown table of the gate's error rates per case (docs/gate.md)."""
    lines = ["| K classes | n per class | baseline flip rate | false alarms per run (95% interval) "
             "| smallest increase caught with 80% power |",
             "|---|---|---|---|---|"]
    for k, n in SIZES:
        # The spread's classes are drawn once per K; the class whose rise is measured sits at the spread's median.
        spread = np.random.default_rng(seed).beta(2, 5, size=k)
        spread[0] = SPREAD.median()
        for label, rates in (("0.1", 0.1), ("0.5", 0.5), (f"Beta(2, 5) spread (class at {spread[0]:.2f})", spread)):
            alarms = count_false_alarms(k, n, rates, reps, seed)
            lo, hi = wilson_interval(alarms, reps, 0.95)
            increase = min_detectable_increase(k, n, rates, 0.8, power_reps, seed)
            caught = "none up to rate 1" if np.isnan(increase) else f"+{increase:.2f}"
            lines.append(f"| {k} | {n} | {label} | {_percent(alarms / reps)} ({_percent(lo)}–{_percent(hi)}) "
                         f"| {caught} |")
    return "\n".join(lines) + "\n"


def _paired_draw(k: int, n: int, rate: float, increase: float, churn: float, reps: int, seed: int,
                 ) -> tuple[Pairs, np.ndarray, np.ndarray, np.ndarray]:
    """Per rep and class: the paired counts, the baseline's flips, the rerun's flips (class 0 risen by `increase`)."""
    rng = np.random.default_rng(seed)
    base = rng.random((reps, k, n)) < rate
    redrawn = rng.random((reps, k, n)) < churn
    now = np.where(redrawn, rng.random((reps, k, n)) < rate, base)
    rise = np.zeros((1, k, 1))
    rise[0, 0, 0] = increase / (1 - rate) if rate < 1 else 0.0
    now |= rng.random((reps, k, n)) < rise
    pairs = Pairs((now & ~base).sum(-1), (base & ~now).sum(-1), np.full((reps, k), n))
    return pairs, base.sum(-1), now.sum(-1), flip_rate_threshold(base.sum(-1), n)


def paired_and_unpaired(k: int, n: int, rate: float, increase: float, churn: float, margin: float = RATE_MARGIN,
                        reps: int = POWER_REPS, seed: int = 0) -> tuple[float, float]:
    """How often class 0 fails, paired and unpaired, when its true flip rate rose by `increase` (the others
    unchanged), with `churn` of each class's images drawn afresh in the rerun."""
    pairs, base, now, thresholds = _paired_draw(k, n, rate, increase, churn, reps, seed)
    paired = paired_family_test(pairs, base, ALPHA, margin).regressed[:, 0].mean()
    unpaired = family_test(now, n, thresholds, ALPHA, margin).regressed[:, 0].mean()
    return float(paired), float(unpaired)


def _first_caught(grid: Iterable[Any], caught_at: Callable[[Any], tuple[float, float]],
                  power: float) -> tuple[Any | None, Any | None]:
    """The first point of `grid` at which `caught_at` (paired, unpaired) reaches `power`, for each of the two (None:
    no point does); the search stops once both are found."""
    found: list[Any | None] = [None, None]
    for point in grid:
        caught = caught_at(point)
        for i in (0, 1):
            if found[i] is None and caught[i] >= power:
                found[i] = point
        if None not in found:
            break
    return found[0], found[1]


def smallest_rise_caught(k: int, n: int, rate: float, churn: float, margin: float = RATE_MARGIN,
                         power: float = 0.8, reps: int = POWER_REPS, seed: int = 0) -> tuple[float, float]:
    """The smallest rise of class 0's flip rate caught with probability `power`, paired and unpaired, on a grid of
    0.01 (NaN: none up to rate 1). The same seed for every rise: the power curves are monotone in it."""
    rises = np.round(np.arange(0.0, 1.0 - rate + 1e-9, 0.01), 2)
    found = _first_caught(rises, lambda rise: paired_and_unpaired(k, n, rate, rise, churn, margin, reps, seed), power)
    paired, unpaired = (float("nan") if rise is None else float(rise) for rise in found)
    return paired, unpaired


MARGIN_SIZES = ((10, 100, 0.1), (10, 100, 0.3), (10, 50, 0.3), (10, 400, 0.3), (10, 1000, 0.3))
CHURNS = (0.1, 0.3)
# The rise the gate is meant to catch with 80% power: the margin plus this.
TARGET_EXCESS = 0.10
# The zoo's target (gate/zoo.py): rises above the margin + ZOO_EXCESS caught in ZOO_POWER of cases.
ZOO_EXCESS, ZOO_POWER = 0.05, 0.9
SIZE_STEP, MOST_IMAGES = 50, 2000


def margin_table(reps: int = POWER_REPS, seed: int = 0) -> str:
    """The Markdown table of the gate's decisions with the default margin, paired and unpaired (docs/gate.md)."""
    lines = [f"| K | n per class | baseline rate | churn | fails an unchanged model (paired / unpaired) "
             f"| fails a rise of exactly the margin {RATE_MARGIN} | smallest rise caught with 80% power: paired "
             "| unpaired |", "|---|---|---|---|---|---|---|---|"]
    for k, n, rate in MARGIN_SIZES:
        for churn in CHURNS:
            same = paired_and_unpaired(k, n, rate, 0.0, churn, reps=reps, seed=seed)
            edge = paired_and_unpaired(k, n, rate, RATE_MARGIN, churn, reps=reps, seed=seed)
            paired, unpaired = smallest_rise_caught(k, n, rate, churn, reps=reps, seed=seed)
            lines.append(f"| {k} | {n} | {rate} | {churn} | {_percent(same[0])} / {_percent(same[1])} "
                         f"| {_percent(edge[0])} / {_percent(edge[1])} | +{paired:.2f} | +{unpaired:.2f} |")
    return "\n".join(lines) + "\n"


def images_for_power(k: int, rate: float, churn: float, rise: float, margin: float = RATE_MARGIN,
                     power: float = 0.8, reps: int = POWER_REPS, seed: int = 0) -> tuple[int | None, int | None]:
    """The fewest images per class, on a grid of SIZE_STEP up to MOST_IMAGES, at which a rise of class 0's flip rate
    by `rise` is caught with probability `power`, paired and unpaired (None: not within MOST_IMAGES)."""
    return _first_caught(range(SIZE_STEP, MOST_IMAGES + 1, SIZE_STEP),
                         lambda n: paired_and_unpaired(k, n, rate, rise, churn, margin, reps, seed), power)


def equal_power_table(reps: int = POWER_REPS, seed: int = 0) -> str:
    """The Markdown table of the images per class each decision needs to catch a rise of the margin + TARGET_EXCESS
    with 80% power, and a rise of the margin + ZOO_EXCESS with ZOO_POWER (the zoo's target; docs/gate.md)."""
    rise, small = round(RATE_MARGIN + TARGET_EXCESS, 2), round(RATE_MARGIN + ZOO_EXCESS, 2)
    lines = [f"| K | baseline rate | churn | to catch +{rise:.2f} with 80% power: paired | unpaired "
             f"| to catch +{small:.2f} with {ZOO_POWER:.0%} power: paired | unpaired |",
             "|---|---|---|---|---|---|---|"]
    for rate in (0.1, 0.3):
        for churn in CHURNS:
            sizes = (*images_for_power(10, rate, churn, rise, reps=reps, seed=seed),
                     *images_for_power(10, rate, churn, small, power=ZOO_POWER, reps=reps, seed=seed))
            lines.append(f"| 10 | {rate} | {churn} | " + " | ".join(str(n or f"> {MOST_IMAGES}") for n in sizes)
                         + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    started = time.perf_counter()
    print(table(), end="")
    print()
    print(margin_table(), end="")
    print()
    print(equal_power_table(), end="")
    print(f"\n({FALSE_ALARM_REPS} repetitions per false-alarm rate, {POWER_REPS} per power; "
          f"{time.perf_counter() - started:.1f} s)")
