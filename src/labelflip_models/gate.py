"""The regression gate's logic: running a case, baseline files, and the statistical decisions.

Decisions compare confidence bounds, never point estimates:
- a class regresses when the *lower* bound of its observed flip rate exceeds the baseline's threshold
  (the upper bound of the baseline rate), so attack noise cannot fail the gate;
- an attack is broken when the *upper* bound of its observed success falls below the baseline's floor
  (the lower bound of the baseline success), because a weakened attack would hide regressions.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest
from scipy.stats import norm as scipy_norm
from torch import nn

from .atomic import atomic_write_files, atomic_write_text
from .attacks import AttackResult, Bounds, make_attack, run_attack
from .data import Dataset, balanced_subset
from .errors import BaselineError, DataError
from .flips import one_sided_wilson, read_csv, to_csv
from .min_norms import median_ci
from .noise import compare_histograms, noise_probe
from .model_cache import model_sha256
from .model_io import check_model, load_model
from .profiles import REGEN_HINT, Case, Profile, get_profile
from .results import build_noise_result, build_result

BASELINE_SCHEMA = "labelflip.baseline/2"
NOISE_BASELINE_SCHEMA = "labelflip.noise-baseline/1"
SYMMETRY_NORMS = ("entrywise", "induced")
# The baseline's thresholds are one-sided 97.5% bounds; the gate's bound on a new run is one-sided 99%.
BASELINE_CONFIDENCE = 0.975
GATE_CONFIDENCE = 0.99


def select(profile: Profile, data: Dataset, attack: str, uncapped: bool = False) -> tuple[np.ndarray, str]:
    """The test images a profile attacks with `attack`, and how to say which they are."""
    per_class = profile.images_per_class(attack, uncapped)
    if per_class is None:
        return np.arange(len(data.test_labels)), "whole test set"
    indices = balanced_subset(data.test_labels, per_class, data.num_classes)
    return indices, f"first {per_class} test images of each class"


def pixel_images(data: Dataset, indices: np.ndarray, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images mapped from [0, 1] onto the model's pixel range, and their labels."""
    images, labels = data.tensors("test", indices)
    return bounds.lower + images * (bounds.upper - bounds.lower), labels


def load_user_model(path: Path, data: Dataset, bounds: Bounds, *, arch: str | None,
                    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, trust_pickle: bool) -> nn.Module:
    """A user's model file, loaded safely and checked on a few of the dataset's images (CPU, eval mode)."""
    sample, _ = pixel_images(data, np.arange(min(8, len(data.test_labels))), bounds)
    model = load_model(path, arch=arch, mean=mean, std=std, trust_pickle=trust_pickle, in_channels=sample.shape[1],
                       num_classes=data.num_classes)
    check_model(model, sample, data.num_classes)
    return model


def run_case(case: Case, data: Dataset, model: nn.Module, seed: int, bounds: Bounds = Bounds(),
             uncapped: bool = False, engine: str = "auto") -> tuple[dict[str, Any], AttackResult]:
    """Attack the case's images; return result.json's content and the adversarials.

    Profile ε are fractions of the pixel range (the paper's [0, 1] scale); the recorded ε is in the model's units.
    """
    start = time.perf_counter()
    profile = get_profile(case.profile)
    indices, selection = select(profile, data, case.attack, uncapped)
    images, labels = pixel_images(data, indices, bounds)
    attack = make_attack(case.attack, **dict(profile.spec(case.attack).params))
    epsilon = None if case.epsilon is None else case.epsilon * (bounds.upper - bounds.lower)
    # The gate's engine option picks how fixed-ε attacks run; minimal attacks have one engine (Foolbox).
    attacked = run_attack(model, images, labels, attack, epsilon, bounds=bounds, seed=seed,
                          engine="auto" if attack.minimal else engine)
    device = str(next(model.parameters()).device)
    return build_result(data, model_info(model), selection, attacked, device, time.perf_counter() - start), attacked


def run_noise_probe(data: Dataset, model: nn.Module, n: int, seed: int,
                    bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Classify `n` uniform-noise images of the dataset's shape; return noise.json's content."""
    start = time.perf_counter()
    shape = tuple(data.tensors("test", np.arange(1))[0].shape[1:])
    counts = noise_probe(model, n, shape, bounds, seed)
    device = str(next(model.parameters()).device)
    return build_noise_result(data, model_info(model), counts, seed, bounds, device, time.perf_counter() - start)


def model_info(model: nn.Module) -> dict[str, Any]:
    return {"sha256": model_sha256(model), "type": type(model).__name__,
            "reference": getattr(model, "labelflip_sidecar", None), "source": getattr(model, "labelflip_source", None)}


def _norm_floors(norms: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Per class, the one-sided lower bound of the median minimal norm (None: too few images for a bound)."""
    floors = {}
    for name, values in norms.items():
        ci = median_ci(values, 2 * BASELINE_CONFIDENCE - 1)
        floors[name] = None if ci is None or not math.isfinite(ci[1]) else float(ci[1])
    return floors


def make_baseline(case: Case, result: dict[str, Any], class_norms: dict[str, np.ndarray] | None = None,
                  ) -> dict[str, Any]:
    """The committed baseline: the run itself plus the thresholds derived from it.

    `class_norms` (minimal attacks only): per class, the minimal norms of the attacked images (inf = attack failed).
    """
    names = result["class_names"]
    per_class = result["per_class_flip_rate"]
    max_rate = {n: float(one_sided_wilson(per_class[n]["count"], per_class[n]["n"], BASELINE_CONFIDENCE, "upper"))
                for n in names}
    success = result["attack_success"]
    analysis = result["analysis"]
    catch = analysis["catch_all"]
    upper = {n: float(one_sided_wilson(v["count"], catch["flips"], BASELINE_CONFIDENCE, "upper"))
             for n, v in catch["shares"].items()}
    lower = {n: float(one_sided_wilson(v["count"], catch["flips"], BASELINE_CONFIDENCE, "lower"))
             for n, v in catch["shares"].items()}
    gate = {
        "method": "wilson",
        "baseline_confidence": BASELINE_CONFIDENCE,
        "gate_confidence": GATE_CONFIDENCE,
        "max_flip_rate": max_rate,
        "min_attack_success": float(one_sided_wilson(success["count"], success["n"], BASELINE_CONFIDENCE, "lower")),
        "symmetry": {norm: {k: analysis["symmetry"][norm][k] for k in ("score", "se")} for norm in SYMMETRY_NORMS},
        # Hysteresis: only classes clearly above or clearly below the threshold are held to their side of it.
        "catch_all": {"threshold": catch["threshold"],
                      "classes": [n for n in names if lower[n] > catch["threshold"]],
                      "ruled_out": [n for n in names if upper[n] < catch["threshold"]]},
        "dominant_targets": {n: d["target"] for n, d in analysis["dominant_targets"].items() if d["strong"]},
    }
    if class_norms is not None:
        gate["min_norm_floor"] = _norm_floors(class_norms)
    return {
        "schema": BASELINE_SCHEMA,
        "case": {"profile": case.profile, "dataset": case.dataset, "attack": case.attack, "epsilon": case.epsilon,
                 **({"arch": case.arch} if case.arch else {})},
        "regenerate_with": REGEN_HINT.format(profile=case.profile),
        "gate": gate,
        "result": result,
    }


def write_baseline(case: Case, root: Path, result: dict[str, Any],
                   class_norms: dict[str, np.ndarray] | None = None) -> Path:
    """CSV first, JSON last: the JSON is what the gate reads, so it only appears once both are complete."""
    json_path = case.baseline_path(root, ".json")
    atomic_write_files({case.baseline_path(root, ".csv"):
                        to_csv(np.array(result["flip_matrix"]), result["class_names"]).encode(),
                        json_path: (json.dumps(make_baseline(case, result, class_norms), indent=1) + "\n").encode()})
    return json_path


def _check_rate(value: Any, what: str, path: Path) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise BaselineError(f"{path}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def _gate_keys(minimal: bool) -> list[tuple[str, ...]]:
    """Where the checks of a case read their thresholds in a baseline's "gate" section."""
    keys = [("dominant_targets",), *(("symmetry", n, k) for n in SYMMETRY_NORMS for k in ("score", "se")),
            *(("catch_all", k) for k in ("threshold", "classes", "ruled_out"))]
    return keys + [("min_norm_floor",)] if minimal else keys


def _has(section: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(section, dict) or key not in section:
            return False
        section = section[key]
    return True


def load_baseline(case: Case, root: Path, class_names: list[str], n: int) -> dict[str, Any]:
    """The baseline for `case`, validated against the run it gates."""
    path = case.baseline_path(root, ".json")
    hint = REGEN_HINT.format(profile=case.profile) + f" -k '{case.id}'"
    if not path.exists():
        raise BaselineError(f"no baseline for {case.id} at {path}; create it with: {hint}")
    try:
        baseline = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{path}: unreadable baseline ({exc}); regenerate it with: {hint}") from None
    if not isinstance(baseline, dict) or baseline.get("schema") != BASELINE_SCHEMA:
        found = baseline.get("schema") if isinstance(baseline, dict) else type(baseline).__name__
        raise BaselineError(f"{path}: schema {found!r}, expected {BASELINE_SCHEMA!r}; regenerate it with: {hint}")
    try:
        gate, result = baseline["gate"], baseline["result"]
        recorded = {k: baseline["case"].get(k, "") if k == "arch" else baseline["case"][k]
                    for k in ("dataset", "attack", "epsilon", "arch")}
        max_rate = gate["max_flip_rate"]
        min_success = _check_rate(gate["min_attack_success"], "min_attack_success", path)
        baseline_n, baseline_names = result["dataset"]["n"], result["class_names"]
    except (KeyError, TypeError) as exc:
        raise BaselineError(f"{path}: malformed baseline (missing {exc}); regenerate it with: {hint}") from None
    missing = [".".join(keys) for keys in _gate_keys(case.minimal) if not _has(gate, keys)]
    if missing:
        raise BaselineError(f"{path}: malformed baseline (missing gate.{', gate.'.join(missing)}); "
                            f"regenerate it with: {hint}")
    if recorded != {"dataset": case.dataset, "attack": case.attack, "epsilon": case.epsilon, "arch": case.arch}:
        raise BaselineError(f"{path}: baseline is for case {Case(case.profile, **recorded).id}, not {case.id}")
    if baseline_names != class_names or set(max_rate) != set(class_names):
        raise BaselineError(f"{path}: baseline classes {sorted(max_rate)} differ from the model's {class_names}")
    if baseline_n != n:
        raise BaselineError(f"{path}: baseline evaluated {baseline_n} images, this run {n}; regenerate it with: {hint}")
    thresholds = {name: _check_rate(max_rate[name], f"max_flip_rate[{name!r}]", path) for name in class_names}
    csv_path = case.baseline_path(root, ".csv")
    if csv_path.exists():
        try:
            matrix, names = read_csv(csv_path)
        except DataError as exc:  # a damaged baseline, not damaged data: the fix is to regenerate it
            raise BaselineError(f"{exc}; regenerate both with: {hint}") from None
        if names != class_names or matrix.tolist() != result["flip_matrix"]:
            raise BaselineError(f"{csv_path} does not match {path.name}; regenerate both with: {hint}")
    return {**baseline, "path": str(path), "thresholds": thresholds, "min_success": min_success}


def check_same_model(path: str | Path, recorded: str, current: str, mismatch: str) -> str | None:
    """A note when the baseline in `path` was made with another model than the one gated (by weights sha256);
    under mismatch="error" a BaselineError instead. Another sha is expected after retraining on other hardware,
    where the statistical checks decide; a CI that pins its model can make it an error."""
    if recorded == current:
        return None
    note = f"{path}: baseline was recorded with model {recorded[:12]}, this run's model is {current[:12]}"
    if mismatch == "error":
        raise BaselineError(f"{note} (--labelflip-model-mismatch error); regenerate the baseline for this model "
                            "with --labelflip-regen, or gate it with --labelflip-model-mismatch warn")
    return note


@dataclass(frozen=True)
class Decision:
    passed: bool
    message: str


def check_flip_rate(name: str, flips: int, n: int, max_rate: float) -> Decision:
    lower = float(one_sided_wilson(flips, n, GATE_CONFIDENCE, "lower"))
    text = (f"class {name!r}: {flips}/{n} flipped (rate {flips / n:.3f}, {GATE_CONFIDENCE:.0%} lower bound "
            f"{lower:.3f}) vs baseline threshold {max_rate:.3f}")
    return Decision(lower <= max_rate, text)


def check_attack_success(succeeded: int, attacked: int, min_success: float) -> Decision:
    upper = float(one_sided_wilson(succeeded, attacked, GATE_CONFIDENCE, "upper"))
    text = (f"attack succeeded on {succeeded}/{attacked} correctly classified images ({GATE_CONFIDENCE:.0%} upper "
            f"bound {upper:.3f}) vs baseline floor {min_success:.3f}")
    return Decision(upper >= min_success, text)


def check_symmetry(norm: str, now: dict[str, float | None], base: dict[str, float | None]) -> Decision:
    """Two-sample z-test on the score difference, each run's standard error from its own bootstrap."""
    if now["score"] is None or base["score"] is None:
        return Decision(now["score"] is None and base["score"] is None,
                        f"{norm} symmetry score {now['score']} vs baseline {base['score']} (None: no flips)")
    z = float(scipy_norm.ppf(0.5 + GATE_CONFIDENCE / 2))
    allowed = z * math.hypot(now["se"], base["se"])
    diff = now["score"] - base["score"]
    return Decision(abs(diff) <= allowed,
                    f"{norm} symmetry score {now['score']:.3f} vs baseline {base['score']:.3f}: difference "
                    f"{diff:+.3f}, allowed ±{allowed:.3f} ({GATE_CONFIDENCE:.0%}, bootstrap standard errors "
                    f"{now['se']:.3f} and {base['se']:.3f})")


def check_catch_all(shares: dict[str, dict[str, Any]], flips: int, base: dict[str, Any]) -> Decision:
    """A baseline catch-all class must not fall clearly below the threshold, nor a ruled-out one rise clearly above."""
    threshold = base["threshold"]
    problems = []
    for name, share in shares.items():
        lower = float(one_sided_wilson(share["count"], flips, GATE_CONFIDENCE, "lower"))
        upper = float(one_sided_wilson(share["count"], flips, GATE_CONFIDENCE, "upper"))
        if name in base["classes"] and upper < threshold:
            problems.append(f"{name!r} no longer absorbs flips ({share['count']}/{flips}, upper bound {upper:.3f})")
        if name in base["ruled_out"] and lower > threshold:
            problems.append(f"{name!r} became a catch-all ({share['count']}/{flips}, lower bound {lower:.3f})")
    text = (f"catch-all threshold {threshold:.3f} of all flips; baseline catch-alls {base['classes']}; "
            + ("; ".join(problems) if problems else "no class crossed it clearly"))
    return Decision(not problems, text)


def check_dominant_targets(matrix: np.ndarray, class_names: list[str], base: dict[str, str]) -> Decision:
    """Where the baseline's dominant target was strong, no other target may now clearly beat it (binomial test)."""
    index = {n: i for i, n in enumerate(class_names)}
    problems = []
    for name, target in base.items():
        row, t = matrix[index[name]], index[target]
        for j, count in enumerate(row):
            if j in (index[name], t) or count <= row[t]:
                continue
            p = binomtest(int(count), int(count + row[t]), 0.5, alternative="greater").pvalue
            if p < 1 - GATE_CONFIDENCE:
                problems.append(f"{name!r} now flips to {class_names[j]!r} ({count}) over {target!r} ({row[t]}), "
                                f"p={p:.2g}")
    return Decision(not problems, "; ".join(problems) or f"{len(base)} strong dominant targets unchanged")


def check_min_norm(name: str, norms: np.ndarray, floor: float) -> Decision:
    """A class regresses when even the upper bound of its median minimal norm lies below the baseline's floor."""
    ci = median_ci(norms, 2 * GATE_CONFIDENCE - 1)
    if ci is None:
        return Decision(False, f"class {name!r}: no attacked images")
    median, _, upper = ci
    return Decision(upper >= floor, f"class {name!r}: median minimal norm {median:.4g} ({GATE_CONFIDENCE:.0%} upper "
                                    f"bound {upper:.4g}) vs baseline floor {floor:.4g}")


def write_noise_baseline(path: Path, noise: dict[str, Any], profile: str) -> Path:
    atomic_write_text(path, json.dumps({"schema": NOISE_BASELINE_SCHEMA, "regenerate_with": REGEN_HINT.format(
        profile=profile), "result": noise}, indent=1) + "\n")
    return path


def load_noise_baseline(path: Path, class_names: list[str], n: int, profile: str) -> dict[str, Any]:
    hint = REGEN_HINT.format(profile=profile) + " -k white_noise"
    if not path.exists():
        raise BaselineError(f"no white-noise baseline at {path}; create it with: {hint}")
    try:
        baseline = json.loads(path.read_text())
        if baseline["schema"] != NOISE_BASELINE_SCHEMA:
            raise BaselineError(f"{path}: schema {baseline['schema']!r}, expected {NOISE_BASELINE_SCHEMA!r}; "
                                f"regenerate it with: {hint}")
        counts, names, base_n = baseline["result"]["counts"], baseline["result"]["class_names"], baseline["result"]["n"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaselineError(f"{path}: unreadable white-noise baseline ({exc!r}); regenerate it with: {hint}") from None
    if names != class_names or len(counts) != len(names) or sum(counts) != base_n:
        raise BaselineError(f"{path}: histogram does not fit the classes {class_names}; regenerate it with: {hint}")
    if base_n != n:
        raise BaselineError(f"{path}: baseline classified {base_n} noise images, this run {n}; regenerate: {hint}")
    return baseline


def _top(counts: list[int], class_names: list[str]) -> str:
    return ", ".join(f"{class_names[i]} {counts[i]}" for i in np.argsort(counts, kind="stable")[::-1][:3])


def check_noise(counts: list[int], base_counts: list[int], class_names: list[str]) -> Decision:
    test = compare_histograms(np.array(base_counts), np.array(counts))
    return Decision(test["p_value"] >= 1 - GATE_CONFIDENCE,
                    f"white-noise histogram (top: {_top(counts, class_names)}) vs baseline (top: "
                    f"{_top(base_counts, class_names)}): "
                    f"{test['test']} p={test['p_value']:.3g}")
