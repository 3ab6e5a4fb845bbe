"""Baseline files: a case's committed run with the thresholds derived from it (JSON), the flip matrix (CSV) and each
attacked image's outcome (`<stem>.images.csv`, for paired decisions), made and written under --labelflip-regen, and
loaded and validated against the run they gate."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.flip_matrix import flip_matrix, matrix_csv, matrix_from_json, read_csv
from ..analysis.min_norms import median_ci
from ..analysis.stats import one_sided_wilson
from ..errors import BaselineError, DataError
from ..storage.atomic import atomic_write_files, atomic_write_text
from .config import REFERENCE_BASELINES
from .decisions import BASELINE_CONFIDENCE, GATE_CONFIDENCE, SYMMETRY_NORMS
from .profiles import REGEN_HINT, Case

BASELINE_SCHEMA = "labelflip.baseline/3"
# Baselines of this schema still gate, unpaired: they hold no per-image outcomes (nor does a baseline/3 written
# without them).
UNPAIRED_SCHEMAS = ("labelflip.baseline/2",)
IMAGES = ".images.csv"
IMAGES_HEADER = ["index", "label", "landed", "norm"]
# Marks the observed run of a failing case beside its baseline: <stem>.obtained.json (as pytest-regressions does).
OBTAINED = ".obtained"
NOISE_BASELINE_SCHEMA = "labelflip.noise-baseline/1"


@dataclass(frozen=True)
class ImageOutcomes:
    """Each attacked image of a run: its index in the test set, true class, the class it landed in (its clean
    prediction when the model already got it wrong), and for minimal attacks its minimal norm (inf: the attack
    failed; NaN: not attacked, the model already got it wrong)."""

    index: np.ndarray
    label: np.ndarray
    landed: np.ndarray
    norm: np.ndarray | None = None

    @property
    def flipped(self) -> np.ndarray:
        return self.landed != self.label

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(IMAGES_HEADER)
        norms = [""] * len(self.index) if self.norm is None else ["" if math.isnan(v) else repr(float(v))
                                                                    for v in self.norm]
        writer.writerows(zip(self.index.tolist(), self.label.tolist(), self.landed.tolist(), norms))
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str, minimal: bool) -> ImageOutcomes:
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or rows[0] != IMAGES_HEADER:
            raise ValueError(f"header {rows[:1]} is not {IMAGES_HEADER}")
        body = np.array(rows[1:], dtype=object).reshape(-1, 4)
        index, label, landed = (body[:, i].astype(np.int64) for i in range(3))
        norm = np.array([float(v) if v else math.nan for v in body[:, 3]]) if minimal else None
        return cls(index, label, landed, norm)


def flip_rate_threshold(count: np.ndarray | int, n: np.ndarray | int) -> np.ndarray:
    """A class's threshold in the baseline: the one-sided BASELINE_CONFIDENCE Wilson upper bound of its flip rate
    (elementwise; the gate's simulated error rates, gate/characteristics.py, derive their thresholds here too)."""
    return one_sided_wilson(count, n, BASELINE_CONFIDENCE, "upper")


def _norm_floors(norms: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Per class, the one-sided lower bound of the median minimal norm (None: too few images for a bound)."""
    floors = {}
    for name, values in norms.items():
        ci = median_ci(values, 2 * BASELINE_CONFIDENCE - 1)
        floors[name] = None if ci is None or not math.isfinite(ci[1]) else float(ci[1])
    return floors


def class_norms(outcomes: ImageOutcomes, names: list[str]) -> dict[str, np.ndarray]:
    """Per class, the minimal norms of the images the attack had to move (inf: it failed)."""
    attacked = ~np.isnan(outcomes.norm)
    return {name: outcomes.norm[(outcomes.label == i) & attacked] for i, name in enumerate(names)}


def make_baseline(case: Case, result: dict[str, Any], outcomes: ImageOutcomes | None = None,
                  attack_strength: dict[str, Any] | None = None) -> tuple[dict[str, Any], str | None]:
    """The committed baseline, and its per-image outcomes as CSV: the run itself plus the thresholds derived from
    it. Without `outcomes` (each image's outcome: what paired decisions need) the baseline gates unpaired; a minimal
    attack's needs them for its norm floors. `attack_strength` (fixed-ε attacks only): the run's attack against
    AutoAttack at its ε (gate/strength.py, Comparison.entry), so that a baseline made with a weak attack says so;
    None records it as not compared.
    """
    if case.minimal and (outcomes is None or outcomes.norm is None):
        raise ValueError(f"{case.id}: a minimal attack's baseline needs each image's minimal norm")
    names = result["class_names"]
    per_class = result["per_class_flip_rate"]
    max_rate = {n: float(flip_rate_threshold(per_class[n]["count"], per_class[n]["n"])) for n in names}
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
    if case.minimal:
        gate["min_norm_floor"] = _norm_floors(class_norms(outcomes, names))
    images = None if outcomes is None else outcomes.csv()
    # Provenance, not a threshold: the gate reads nothing from it, so baselines without it still load.
    strength = {} if case.minimal else {"attack_strength": attack_strength or {
        "compared": False, "reason": "not compared with AutoAttack when this file was written"}}
    return {
        "schema": BASELINE_SCHEMA,
        "case": {"profile": case.profile, "dataset": case.dataset, "attack": case.attack, "epsilon": case.epsilon,
                 **({"arch": case.arch} if case.arch else {})},
        "regenerate_with": REGEN_HINT.format(profile=case.profile),
        **strength,
        "gate": gate,
        # What pairs a later run with this one image by image.
        **({} if images is None else {"images": {"file": case.stem + IMAGES, "n": len(outcomes.index),
                                                 "sha256": hashlib.sha256(images.encode()).hexdigest()}}),
        "result": result,
    }, images


def write_baseline(case: Case, root: Path, result: dict[str, Any], outcomes: ImageOutcomes | None = None,
                   obtained: bool = False, attack_strength: dict[str, Any] | None = None) -> Path:
    """CSVs first, JSON last: the JSON is what the gate reads, so it only appears once all are complete.

    `obtained`: the run of a failing case, written beside its baseline as <stem>.obtained.json/.csv in the same
    schema, for a reviewer to diff (and to promote with the regen flag if the change was intended). A regenerated
    baseline replaces what was obtained before it. `attack_strength`: as make_baseline's."""
    infix = OBTAINED if obtained else ""
    json_path = case.baseline_path(root, f"{infix}.json")
    baseline, images = make_baseline(case, result, outcomes, attack_strength)
    files = {case.baseline_path(root, f"{infix}.csv"):
             matrix_csv(matrix_from_json(result["flip_matrix"]), result["class_names"]).encode()}
    if images is not None:
        baseline["images"]["file"] = case.stem + infix + IMAGES
        files[case.baseline_path(root, f"{infix}{IMAGES}")] = images.encode()
    atomic_write_files({**files, json_path: (json.dumps(baseline, indent=1) + "\n").encode()})
    if not obtained:
        for suffix in (".json", ".csv", IMAGES):
            case.baseline_path(root, OBTAINED + suffix).unlink(missing_ok=True)
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


def _hint(profile: str, root: Path, select: str) -> str:
    """How to regenerate, naming the baseline folder unless it is the reference models' default."""
    named = "" if Path(root) == REFERENCE_BASELINES else f" --labelflip-baselines {root}"
    return f"{REGEN_HINT.format(profile=profile)}{named} {select}"


def load_baseline(case: Case, root: Path, class_names: list[str], n: int) -> dict[str, Any]:
    """The baseline for `case`, validated against the run it gates."""
    path = case.baseline_path(root, ".json")
    hint = _hint(case.profile, root, f"-k '{case.id}'")
    if not path.exists():
        raise BaselineError(f"no baseline for {case.id} at {path}; create it with: {hint}")
    try:
        baseline = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{path}: unreadable baseline ({exc}); regenerate it with: {hint}") from None
    if not isinstance(baseline, dict) or baseline.get("schema") not in (BASELINE_SCHEMA, *UNPAIRED_SCHEMAS):
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
            matrix, names = read_csv(csv_path)  # either layout: dense, or flip pairs above DENSE_MAX_CLASSES
            recorded_matrix = matrix_from_json(result["flip_matrix"])
        except DataError as exc:  # a damaged baseline, not damaged data: the fix is to regenerate it
            raise BaselineError(f"{exc}; regenerate both with: {hint}") from None
        if names != class_names or not np.array_equal(matrix, recorded_matrix):
            raise BaselineError(f"{csv_path} does not match {path.name}; regenerate both with: {hint}")
    outcomes = _load_outcomes(case, path, baseline, hint) if "images" in baseline else None
    return {**baseline, "path": str(path), "thresholds": thresholds, "min_success": min_success,
            "outcomes": outcomes}


def _load_outcomes(case: Case, path: Path, baseline: dict[str, Any], hint: str) -> ImageOutcomes:
    """The per-image outcomes beside the baseline, checked against it: the file it names, unchanged (sha256), and
    adding up to its flip matrix."""
    try:
        entry = baseline["images"]
        images_path = path.with_name(entry["file"])
        text = images_path.read_text()
    except (KeyError, TypeError) as exc:
        raise BaselineError(f"{path}: malformed baseline (missing images.{exc}); regenerate it with: {hint}") from None
    except OSError as exc:
        raise BaselineError(f"{path}: its per-image outcomes cannot be read ({exc}); regenerate it with: "
                            f"{hint}") from None
    if hashlib.sha256(text.encode()).hexdigest() != entry.get("sha256"):
        raise BaselineError(f"{images_path} does not match {path.name} (sha256); regenerate both with: {hint}")
    try:
        outcomes = ImageOutcomes.from_csv(text, case.minimal)
    except ValueError as exc:
        raise BaselineError(f"{images_path}: unreadable ({exc}); regenerate it with: {hint}") from None
    names = baseline["result"]["class_names"]
    try:
        matrix = flip_matrix(outcomes.label, outcomes.landed, len(names))
    except ValueError:
        matrix = None
    if len(outcomes.index) != baseline["result"]["dataset"]["n"] or matrix is None or not np.array_equal(
            matrix, matrix_from_json(baseline["result"]["flip_matrix"])):
        raise BaselineError(f"{images_path} does not add up to the flip matrix of {path.name}; regenerate both "
                            f"with: {hint}")
    return outcomes


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


def noise_obtained_path(path: Path) -> Path:
    return path.with_name(f"{path.name.removesuffix('.json')}{OBTAINED}.json")


def write_noise_baseline(path: Path, noise: dict[str, Any], profile: str, obtained: bool = False) -> Path:
    """Writes the white-noise baseline `path`, or with `obtained` a failing probe's observed histogram (at a
    noise_obtained_path); a regenerated baseline replaces what was obtained before it."""
    atomic_write_text(path, json.dumps({"schema": NOISE_BASELINE_SCHEMA, "regenerate_with": REGEN_HINT.format(
        profile=profile), "result": noise}, indent=1) + "\n")
    if not obtained:
        noise_obtained_path(path).unlink(missing_ok=True)
    return path


def load_noise_baseline(path: Path, class_names: list[str], n: int, profile: str) -> dict[str, Any]:
    hint = _hint(profile, path.parents[2], "-k white_noise")
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


def _dataset_of(folder: str, datasets: tuple[str, ...]) -> str | None:
    """The dataset a baseline folder (<dataset> or <dataset>-<arch>) belongs to: the longest name it starts with."""
    matches = [d for d in datasets if folder == d or folder.startswith(d + "-")]
    return max(matches, key=len) if matches else None


def orphan_baselines(root: Path, profile: str, datasets: tuple[str, ...], all_datasets: tuple[str, ...],
                     used: set[Path]) -> list[Path]:
    """Baseline files of `profile` under `root` that no case uses (`used`: the selected cases' files), in the
    folders of the selected `datasets`, or in folders that belong to none of `all_datasets`."""
    orphans = []
    for path in sorted((Path(root) / profile).rglob("*")):
        if not path.is_file() or path.name.startswith(".") or OBTAINED + "." in path.name:
            continue
        relative = path.relative_to(Path(root) / profile)
        owner = _dataset_of(relative.parts[0], all_datasets) if len(relative.parts) > 1 else None
        if path not in used and (owner is None or owner in datasets):
            orphans.append(path)
    return orphans
