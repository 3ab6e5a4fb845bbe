"""A run's artefacts, built and written only here: `flip_matrix.csv` in the paper's layout, `result.json`
(statistics, analysis, provenance) and `noise.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..analysis.flip_matrix import class_flips, flip_matrix, to_csv
from ..analysis.min_norms import minimal_norm_summary
from ..analysis.noise import noise_summary
from ..analysis.stats import wilson_interval
from ..analysis.structure import catch_all, dominant_targets, pair_relations
from ..analysis.symmetry import symmetry_analysis
from ..attacks import AttackResult
from ..data import Dataset
from ..models.cache import model_sha256
from ..provenance import device_name, machine, now_iso, versions
from ..storage.atomic import atomic_write_files, atomic_write_text
from ..storage.out_dir import check_out_dir

# /2: one "model" block for the CLI and the gate (model_block).
RESULT_SCHEMA = "labelflip.result/2"
NOISE_SCHEMA = "labelflip.noise/2"
CONFIDENCE = 0.95


def model_block(model: nn.Module, *, arch: str | None = None, path: str | Path | None = None,
                reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """What result.json and noise.json record of the model: its weights' sha256, class, architecture name (when
    known), the file it came from, and for labelflip's reference models their training record."""
    return {"sha256": model_sha256(model), "type": type(model).__name__, "arch": arch,
            "path": None if path is None else str(Path(path).absolute()), "reference": reference}


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n, CONFIDENCE)
    return {"count": int(k), "n": int(n), "rate": k / n if n else None, "ci": [float(lo), float(hi)]}


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
        "flip_matrix": matrix.tolist(),
        "per_class_flip_rate": {name: _rate(int(k), int(n)) for name, k, n in zip(class_names, flips, totals)},
        "flip_fraction": _rate(int(flips.sum()), int(totals.sum())),
        "clean_accuracy": _rate(int(correct.sum()), len(labels)),
        # Success among the images the model classified correctly: those the attack had to move.
        "attack_success": _rate(int(flipped.sum()), int(correct.sum())),
        "perturbation_linf": {"max": float(norms.max()) if len(norms) else 0.0,
                              "mean": float(norms.mean()) if len(norms) else 0.0},
        # In the attack's own norm, over the adversarials that succeeded.
        "perturbation": {"norm": result.norm, "median": float(moved.median()) if len(moved) else None,
                         "max": float(moved.max()) if len(moved) else None},
        "confidence": {"method": "wilson", "level": CONFIDENCE},
        "analysis": analyse(matrix, class_names, seed),
        **({"minimal_norms": _minimal_norms(result, class_names)} if result.epsilon is None else {}),
    }


def _minimal_norms(result: AttackResult, class_names: list[str]) -> dict[str, Any]:
    """Per-class and per-pair summaries, plus every image's minimal norm (None: not attacked, or attack failed)."""
    norms, success, attacked = result.norms.numpy(), result.success.numpy(), result.attacked.numpy()
    summary = minimal_norm_summary(result.labels.numpy(), result.landed.numpy(), norms, success, attacked,
                                   class_names, CONFIDENCE)
    summary["per_image"] = [float(v) if ok else None for v, ok in zip(norms, success)]
    return summary


def analyse(matrix: np.ndarray, class_names: list[str], seed: int) -> dict[str, Any]:
    """Where the flips go: symmetry, dominant targets, symmetric/one-way pairs, catch-all columns."""
    return {"symmetry": symmetry_analysis(matrix, CONFIDENCE, seed=seed),
            "dominant_targets": dominant_targets(matrix, class_names, confidence=CONFIDENCE),
            "pairs": pair_relations(matrix, class_names, CONFIDENCE),
            "catch_all": catch_all(matrix, class_names, CONFIDENCE)}


def provenance(seed: int, device: str, wall_seconds: float, attack_seconds: float) -> dict[str, Any]:
    return {"seed": seed, "device": device_name(device), "machine": machine(), "versions": versions(),
            "timestamp": now_iso(), "wall_seconds": round(wall_seconds, 2),
            "attack_seconds": round(attack_seconds, 2)}


def write_run(out: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write both files atomically; result.json goes last, so its presence marks a complete run."""
    out = check_out_dir(out)
    csv_path, json_path = out / "flip_matrix.csv", out / "result.json"
    atomic_write_files({csv_path: to_csv(np.array(result["flip_matrix"]), result["class_names"]).encode(),
                        json_path: (json.dumps(result, indent=2) + "\n").encode()})
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
                    "note": data.note, "selection": selection, "n": len(result.labels)},
        "model": model,
        "attack": result.params,
        **summarize(result, class_names or list(data.class_names), result.params["seed"]),
        "provenance": provenance(result.params["seed"], device, wall_seconds, result.seconds),
    }

