"""A run's artefacts, built and written only here: the flip matrix as CSV (`flip_matrix.csv` in the paper's layout,
or `flip_pairs.csv` above DENSE_MAX_CLASSES classes: analysis/flip_matrix.py), `result.json` (statistics,
analysis, provenance) and `noise.json`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..analysis.flip_matrix import (
    DENSE_CSV,
    PAIRS_CSV,
    class_flips,
    csv_name,
    flip_matrix,
    matrix_csv,
    matrix_from_json,
    matrix_to_json,
)
from ..analysis.min_norms import minimal_norm_summary
from ..analysis.noise import noise_summary
from ..analysis.stats import rates
from ..analysis.structure import catch_all, dominant_targets, pair_relations, top_pairs, worst_classes
from ..analysis.symmetry import symmetry_analysis
from ..attacks import AttackResult
from ..data import Dataset
from ..models.cache import model_sha256
from ..provenance import device_name, machine, now_iso, versions
from ..storage.atomic import atomic_write_files, atomic_write_text
from ..storage.out_dir import check_out_dir

if TYPE_CHECKING:
    from .model_checks import ModelCheck

# /2: one "model" block for the CLI and the gate (model_block).
RESULT_SCHEMA = "labelflip.result/2"
NOISE_SCHEMA = "labelflip.noise/2"
# A gate session's comparison of a fixed-ε case's attack with AutoAttack, written by gate/strength.py beside the
# case's result.json in the report's gate-runs/ folder, read by the reports.
STRENGTH_FILE = "attack_strength.json"
STRENGTH_SCHEMA = "labelflip.attack-strength/1"
CONFIDENCE = 0.95


def model_block(model: nn.Module, *, arch: str | None = None, path: str | Path | None = None,
                reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """What result.json and noise.json record of the model: its weights' sha256, class, architecture name (when
    known), the file it came from, and for labelflip's reference models their training record."""
    return {"sha256": model_sha256(model), "type": type(model).__name__, "arch": arch,
            "path": None if path is None else str(Path(path).absolute()), "reference": reference}


def _rate(k: int, n: int) -> dict[str, Any]:
    return rates([k], [n], CONFIDENCE)[0]


def _robust_accuracy(matrix: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Images still in their true class after the attack (the diagonal), overall and per class, the worst class
    (ties: the lower class index) and the spread of the per-class rates (classes without images left out)."""
    kept, images = np.diag(matrix), matrix.sum(1)
    per_class = dict(zip(class_names, rates(kept, images, CONFIDENCE)))
    rated = np.flatnonzero(images)
    out: dict[str, Any] = {"overall": _rate(int(kept.sum()), int(images.sum())), "per_class": per_class,
                           "worst": None, "spread": None}
    if len(rated):
        values = kept[rated] / images[rated]
        worst = class_names[rated[np.argmin(values)]]
        out["worst"] = {"class": worst, **per_class[worst]}
        # Population std: the classes are all there is, not a sample of classes.
        out["spread"] = {"max_minus_min": float(values.max() - values.min()), "std": float(values.std())}
    return out


def summarize(result: AttackResult, class_names: list[str], seed: int = 0) -> dict[str, Any]:
    """Counts and statistics of one attack run (no provenance)."""
    labels = result.labels.numpy()
    matrix = flip_matrix(labels, result.landed.numpy(), len(class_names))
    flips, totals = class_flips(matrix)
    correct = result.clean_pred == result.labels
    flipped = correct & (result.adv_pred != result.labels)
    norms = result.linf_norms
    moved = result.norms[result.success]
    return {
        "class_names": class_names,
        "flip_matrix": matrix_to_json(matrix),
        "per_class_flip_rate": dict(zip(class_names, rates(flips, totals, CONFIDENCE))),
        "flip_fraction": _rate(int(flips.sum()), int(totals.sum())),
        "clean_accuracy": _rate(int(correct.sum()), len(labels)),
        # Success among the images the model classified correctly: those the attack had to move.
        "attack_success": _rate(int(flipped.sum()), int(correct.sum())),
        "robust_accuracy": _robust_accuracy(matrix, class_names),
        "perturbation_linf": {"max": float(norms.max()) if len(norms) else 0.0,
                              "mean": float(norms.mean()) if len(norms) else 0.0},
        # In the attack's own norm, over the adversarials that succeeded.
        "perturbation": {"norm": result.norm, "median": float(moved.median()) if len(moved) else None,
                         "max": float(moved.max()) if len(moved) else None},
        "confidence": {"method": "wilson", "level": CONFIDENCE},
        "analysis": analyse(matrix, class_names, seed),
        **({"minimal_norms": _minimal_norms(result, class_names)} if result.epsilon is None else {}),
        **({"autoattack": _broken_by(result)} if result.broken_by is not None else {}),
        # Of the flipped images, those whose adversarial still flips once saved as an 8-bit image.
        **({"survives_8bit": _rate(*result.survives_8bit)} if result.rounded_pred is not None else {}),
    }


def _broken_by(result: AttackResult) -> dict[str, Any]:
    """How many images each component of an AutoAttack-family run broke first, and every image's component
    (None: not broken, or misclassified before the attack)."""
    components = result.params["components"]
    counts = torch.bincount(result.broken_by + 1, minlength=len(components) + 1).tolist()
    return {"components": components, "broken_by": dict(zip(components, counts[1:])),
            "per_image": [components[i] if i >= 0 else None for i in result.broken_by.tolist()]}


def _minimal_norms(result: AttackResult, class_names: list[str]) -> dict[str, Any]:
    """Per-class and per-pair summaries, plus every image's minimal norm (None: not attacked, or attack failed)."""
    norms, success, attacked = result.norms.numpy(), result.success.numpy(), result.attacked.numpy()
    summary = minimal_norm_summary(result.labels.numpy(), result.landed.numpy(), norms, success, attacked,
                                   class_names, CONFIDENCE)
    summary["per_image"] = [float(v) if ok else None for v, ok in zip(norms, success)]
    return summary


def analyse(matrix: np.ndarray, class_names: list[str], seed: int) -> dict[str, Any]:
    """Where the flips go: symmetry, dominant targets, symmetric/one-way pairs, catch-all columns, the most
    frequent flips and the most flipped classes."""
    return {"symmetry": symmetry_analysis(matrix, CONFIDENCE, seed=seed),
            "dominant_targets": dominant_targets(matrix, class_names, confidence=CONFIDENCE),
            "pairs": pair_relations(matrix, class_names, CONFIDENCE),
            "catch_all": catch_all(matrix, class_names, CONFIDENCE),
            "top_pairs": top_pairs(matrix, class_names, CONFIDENCE),
            "worst_classes": worst_classes(matrix, class_names, CONFIDENCE)}


def provenance(seed: int, device: str, wall_seconds: float, attack_seconds: float) -> dict[str, Any]:
    return {"seed": seed, "device": device_name(device), "machine": machine(), "versions": versions(),
            "timestamp": now_iso(), "wall_seconds": round(wall_seconds, 2),
            "attack_seconds": round(attack_seconds, 2)}


def with_model_checks(result: dict[str, Any], checks: list[ModelCheck],
                      evaluation: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """result.json's content with the model checks (runs/model_checks.py) run before the attack: name, passed,
    message, figures and warning of each; and the evaluation checks run after it (gate/evaluation_checks.py,
    `one_run_checks`), each as {"name", "passed", "message", "figures"}, or None where they did not run."""
    return {**result, "model_checks": [dataclasses.asdict(c) for c in checks],
            "evaluation_checks": None if evaluation is None else list(evaluation)}


def write_run(out: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write the flip matrix's CSV and result.json atomically; result.json goes last, so its presence marks a
    complete run. A CSV of the other layout, left in `out` by an earlier run, would contradict it: it goes."""
    out = check_out_dir(out)
    names = result["class_names"]
    csv_path, json_path = out / csv_name(len(names)), out / "result.json"
    atomic_write_files({csv_path: matrix_csv(matrix_from_json(result["flip_matrix"]), names).encode(),
                        json_path: (json.dumps(result, indent=2) + "\n").encode()})
    (out / (PAIRS_CSV if csv_path.name == DENSE_CSV else DENSE_CSV)).unlink(missing_ok=True)
    return csv_path, json_path


def write_noise(out: Path, noise: dict[str, Any]) -> Path:
    out = check_out_dir(out)
    atomic_write_text(out / "noise.json", json.dumps(noise, indent=2) + "\n")
    return out / "noise.json"


def build_noise_result(data: Dataset, model: dict[str, Any], counts: np.ndarray, seed: int,
                       bounds: tuple[float, float], device: str, seconds: float) -> dict[str, Any]:
    """Everything `noise.json` holds: the white-noise class histogram with intervals, and provenance."""
    names = list(data.class_names)
    return {"schema": NOISE_SCHEMA, "dataset": {"name": data.name, "n_classes": len(names)}, "model": model,
            "n": int(counts.sum()), "seed": seed, "bounds": list(bounds), "class_names": names,
            "counts": [int(c) for c in counts], "histogram": noise_summary(counts, names, CONFIDENCE),
            "provenance": provenance(seed, device, seconds, seconds)}


def build_result(data: Dataset, model: dict[str, Any], selection: str, result: AttackResult,
                 device: str, wall_seconds: float, class_names: list[str] | None = None) -> dict[str, Any]:
    """Everything `result.json` holds: what was attacked, with what, the counts, and provenance."""
    return {
        "schema": RESULT_SCHEMA,
        "dataset": {"name": data.name, "fingerprint": data.fingerprint, "source": data.source,
                    "note": data.note, "selection": selection, "n": len(result.labels),
                    **({"class_order": data.class_order} if data.class_order else {})},
        "model": model,
        "attack": result.params,
        **summarize(result, class_names or list(data.class_names), result.params["seed"]),
        "provenance": provenance(result.params["seed"], device, wall_seconds, result.seconds),
    }

