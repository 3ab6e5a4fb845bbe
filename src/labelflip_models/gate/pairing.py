"""Whether a run attacked its baseline's images with its baseline's settings, so that the gate decides image by image
(paired), and the paired counts it then decides on.

Pairing needs the same images (test-set indices, data fingerprint, true classes) and the same attack settings;
the engine, batch size and seed may differ. Under an unchanged model the two runs' outcomes of an image are then
exchangeable whatever the random starts, so the paired tests keep their level; the same seed only makes the
outcomes agree more often, which is where the paired tests' power comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .baselines import ImageOutcomes
from .decisions import Decision, Pairs, check_flip_rates

# Settings of a run that do not change what it measures.
NOT_COMPARED = frozenset({"engine", "batch_size", "chunk_images", "seed"})


@dataclass(frozen=True)
class Paired:
    """A run and its baseline, image by image."""

    pairs: Pairs  # per class: newly flipped, no longer flipped, images
    base_flips: np.ndarray  # per class: the baseline's flips
    same_seed: bool
    # Minimal attacks, per class: (norms now, norms in the baseline) of the images both attacked.
    norms: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def overall(self) -> tuple[int, int, int]:
        return int(self.pairs.newly.sum()), int(self.pairs.no_longer.sum()), int(self.pairs.n.sum())


def flip_rate_counts(result: dict[str, Any], baseline: dict[str, Any], paired: Paired | None) -> dict[str, list[Any]]:
    """What the flip-rate decision weighs, per class, from a run's result.json content and its loaded baseline: the
    run's flips and images, the baseline's thresholds and rates, and where `paired` is given the paired counts."""
    names, observed = result["class_names"], result["per_class_flip_rate"]
    base = baseline["result"]["per_class_flip_rate"]
    counts: dict[str, list[Any]] = {
        "flips": [observed[n]["count"] for n in names], "n": [observed[n]["n"] for n in names],
        "thresholds": [baseline["thresholds"][n] for n in names], "base_rates": [base[n]["rate"] or 0.0 for n in names]}
    if paired is not None:
        counts.update(newly=paired.pairs.newly.tolist(), no_longer=paired.pairs.no_longer.tolist(),
                      paired_n=paired.pairs.n.tolist(), base_flips=paired.base_flips.tolist())
    return counts


def decide_flip_rates(names: list[str], counts: dict[str, list[Any]], margin: float,
                      paired: bool = True) -> dict[str, Decision]:
    """check_flip_rates on flip_rate_counts: paired where the counts hold paired ones and `paired` is true, else
    unpaired against the baseline's thresholds."""
    pairs = None
    if paired and "newly" in counts:
        pairs = Pairs(*(np.asarray(counts[k]) for k in ("newly", "no_longer", "paired_n")))
    return check_flip_rates(names, counts["flips"], counts["n"], counts["thresholds"], counts["base_rates"], margin,
                            pairs=pairs, base_flips=counts["base_flips"] if pairs is not None else None)


def flip_rate_decisions(result: dict[str, Any], baseline: dict[str, Any], margin: float,
                        paired: Paired | None) -> dict[str, Decision]:
    """check_flip_rates on a run's result.json content against its loaded baseline: paired where `paired` is given,
    else unpaired against the baseline's thresholds."""
    return decide_flip_rates(result["class_names"], flip_rate_counts(result, baseline, paired), margin)


def _settings(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result["attack"].items() if k not in NOT_COMPARED}


def pair(now: ImageOutcomes, result: dict[str, Any], baseline: dict[str, Any]) -> tuple[Paired | None, str]:
    """The run paired with its baseline, or None with the reason it cannot be."""
    base: ImageOutcomes | None = baseline.get("outcomes")
    if base is None:
        return None, (f"unpaired: the baseline ({baseline['schema']}) holds no per-image outcomes; regenerate it to "
                      "decide image by image")
    if result["dataset"]["fingerprint"] != baseline["result"]["dataset"]["fingerprint"]:
        return None, "unpaired: the test data differ from the baseline's (fingerprint)"
    ours, theirs = _settings(result), _settings(baseline["result"])
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        return None, (f"unpaired: attack settings differ from the baseline's: {', '.join(differ)} (after a change "
                      "of the profile's attack, on purpose or by an upgrade, regenerate the baseline)")
    mine, other = np.argsort(now.index, kind="stable"), np.argsort(base.index, kind="stable")
    if not np.array_equal(now.index[mine], base.index[other]) or not np.array_equal(now.label[mine],
                                                                                    base.label[other]):
        return None, "unpaired: the run attacked other images than the baseline"
    classes = len(result["class_names"])
    label = now.label[mine]
    flipped_now, flipped_base = now.flipped[mine], base.flipped[other]

    def per_class(mask: np.ndarray) -> np.ndarray:
        return np.bincount(label[mask], minlength=classes)

    pairs = Pairs(per_class(flipped_now & ~flipped_base), per_class(flipped_base & ~flipped_now),
                  np.bincount(label, minlength=classes))
    norms = None
    if now.norm is not None and base.norm is not None:
        a, b = now.norm[mine], base.norm[other]
        both = ~np.isnan(a) & ~np.isnan(b)  # attacked in both runs: classified correctly both times
        norms = {name: (a[both & (label == i)], b[both & (label == i)])
                 for i, name in enumerate(result["class_names"])}
    same_seed = result["attack"].get("seed") == baseline["result"]["attack"].get("seed")
    how = "paired image by image" + ("" if same_seed else " (other attack seed than the baseline's)")
    return Paired(pairs, per_class(flipped_base), same_seed, norms), how
