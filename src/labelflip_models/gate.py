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
from torch import nn

from .atomic import atomic_write_text
from .attacks import AttackResult, make_attack, run_attack
from .data import Dataset, balanced_subset
from .errors import BaselineError
from .flips import one_sided_wilson, read_csv, to_csv
from .model_cache import model_sha256
from .profiles import REGEN_HINT, Case, Profile, get_profile
from .report import build_result

BASELINE_SCHEMA = "labelflip.baseline/1"
# The baseline's thresholds are one-sided 97.5% bounds; the gate's bound on a new run is one-sided 99%.
BASELINE_CONFIDENCE = 0.975
GATE_CONFIDENCE = 0.99


def select(profile: Profile, data: Dataset) -> tuple[np.ndarray, str]:
    """The test images a profile attacks, and how to say which they are."""
    if profile.per_class is None:
        return np.arange(len(data.test_labels)), "whole test set"
    indices = balanced_subset(data.test_labels, profile.per_class, data.num_classes)
    return indices, f"first {profile.per_class} test images of each class"


def run_case(case: Case, data: Dataset, model: nn.Module, seed: int) -> tuple[dict[str, Any], AttackResult]:
    """Attack the case's images; return result.json's content and the adversarials."""
    start = time.perf_counter()
    indices, selection = select(get_profile(case.profile), data)
    images, labels = data.tensors("test", indices)
    attacked = run_attack(model, images, labels, make_attack(case.attack), case.epsilon, seed=seed)
    model_info = {"sha256": model_sha256(model), "type": type(model).__name__,
                  "reference": getattr(model, "labelflip_sidecar", None)}
    device = str(next(model.parameters()).device)
    return build_result(data, model_info, selection, attacked, device, time.perf_counter() - start), attacked


def make_baseline(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    names = result["class_names"]
    per_class = result["per_class_flip_rate"]
    max_rate = {n: float(one_sided_wilson(per_class[n]["count"], per_class[n]["n"], BASELINE_CONFIDENCE, "upper"))
                for n in names}
    success = result["attack_success"]
    return {
        "schema": BASELINE_SCHEMA,
        "case": {"profile": case.profile, "dataset": case.dataset, "attack": case.attack, "epsilon": case.epsilon},
        "regenerate_with": REGEN_HINT.format(profile=case.profile),
        "gate": {
            "method": "wilson",
            "baseline_confidence": BASELINE_CONFIDENCE,
            "gate_confidence": GATE_CONFIDENCE,
            "max_flip_rate": max_rate,
            "min_attack_success": float(one_sided_wilson(success["count"], success["n"],
                                                         BASELINE_CONFIDENCE, "lower")),
        },
        "result": result,
    }


def write_baseline(case: Case, root: Path, result: dict[str, Any]) -> Path:
    """CSV first, JSON last: the JSON is what the gate reads, so it only appears once both are complete."""
    atomic_write_text(case.baseline_path(root, ".csv"),
                      to_csv(np.array(result["flip_matrix"]), result["class_names"]))
    json_path = case.baseline_path(root, ".json")
    atomic_write_text(json_path, json.dumps(make_baseline(case, result), indent=1) + "\n")
    return json_path


def _check_rate(value: Any, what: str, path: Path) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise BaselineError(f"{path}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


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
        recorded = {k: baseline["case"][k] for k in ("dataset", "attack", "epsilon")}
        max_rate = gate["max_flip_rate"]
        min_success = _check_rate(gate["min_attack_success"], "min_attack_success", path)
        baseline_n, baseline_names = result["dataset"]["n"], result["class_names"]
    except (KeyError, TypeError) as exc:
        raise BaselineError(f"{path}: malformed baseline (missing {exc}); regenerate it with: {hint}") from None
    if recorded != {"dataset": case.dataset, "attack": case.attack, "epsilon": case.epsilon}:
        raise BaselineError(f"{path}: baseline is for {recorded}, not {case.id}")
    if baseline_names != class_names or set(max_rate) != set(class_names):
        raise BaselineError(f"{path}: baseline classes {sorted(max_rate)} differ from the model's {class_names}")
    if baseline_n != n:
        raise BaselineError(f"{path}: baseline evaluated {baseline_n} images, this run {n}; regenerate it with: {hint}")
    thresholds = {name: _check_rate(max_rate[name], f"max_flip_rate[{name!r}]", path) for name in class_names}
    csv_path = case.baseline_path(root, ".csv")
    if csv_path.exists():
        matrix, names = read_csv(csv_path)
        if names != class_names or matrix.tolist() != result["flip_matrix"]:
            raise BaselineError(f"{csv_path} does not match {path.name}; regenerate both with: {hint}")
    return {**baseline, "path": str(path), "thresholds": thresholds, "min_success": min_success}


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
