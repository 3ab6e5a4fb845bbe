"""Find result.json / noise.json files and check they are runs this package can report on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis.flip_matrix import matrix_from_json
from ..errors import ConfigError, DataError
from ..runs.results import NOISE_SCHEMA, RESULT_SCHEMA, STRENGTH_FILE, STRENGTH_SCHEMA

RUN_FILES = ("result.json", "noise.json")
# A run directory, a directory of runs (per dataset), or a directory of those (per model or CI job).
SEARCH_DEPTH = 2


def _run_files(directory: Path, names: Sequence[str] = RUN_FILES) -> list[Path]:
    found = []
    for depth in range(SEARCH_DEPTH + 1):
        for name in names:
            found += directory.glob("/".join(["*"] * depth + [name]))
    return sorted(set(found))


def _is_count_list(value: Any, length: int) -> bool:
    return (isinstance(value, list) and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _check_names(data: dict[str, Any], path: Path) -> list[str]:
    names = data.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"{path}: 'class_names' must be a list of at least two strings")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: 'class_names' contains duplicates")
    dataset = data.get("dataset")
    if not (isinstance(dataset, dict) and isinstance(dataset.get("name"), str)):
        raise ConfigError(f"{path}: 'dataset.name' is missing")
    return names


def _check_result(data: dict[str, Any], path: Path) -> None:
    k = len(_check_names(data, path))
    try:
        shape = matrix_from_json(data.get("flip_matrix")).shape
    except DataError:
        shape = None
    if shape != (k, k):
        raise ConfigError(f"{path}: 'flip_matrix' must be a {k}x{k} matrix of non-negative integers, as a "
                          "nested list or a COO object")
    attack = data.get("attack")
    if not (isinstance(attack, dict) and isinstance(attack.get("name"), str)):
        raise ConfigError(f"{path}: 'attack.name' is missing")
    eps = attack.get("epsilon")
    if eps is None and not attack.get("minimal"):
        raise ConfigError(f"{path}: a fixed-ε attack needs 'attack.epsilon'")
    if eps is not None and not (isinstance(eps, (int, float)) and eps > 0):
        raise ConfigError(f"{path}: 'attack.epsilon' must be a positive number, got {eps!r}")


def _check_noise(data: dict[str, Any], path: Path) -> None:
    k = len(_check_names(data, path))
    if not _is_count_list(data.get("counts"), k):
        raise ConfigError(f"{path}: 'counts' must be {k} non-negative integers")
    if not isinstance(data.get("histogram"), dict):
        raise ConfigError(f"{path}: 'histogram' is missing")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_runs(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results, noise probes) from run directories, directories of runs, or the JSON files themselves."""
    if not paths:
        raise ConfigError("no run directories or files given")
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = _run_files(path)
            if not found:
                raise ConfigError(f"no {' or '.join(RUN_FILES)} in {path} "
                                  f"or its sub-directories ({SEARCH_DEPTH} levels down)")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"run path {path} does not exist")
    results, noise, seen = [], [], set()
    for path in files:
        if path.resolve() in seen:  # the same run named twice (e.g. a directory and its parent)
            continue
        seen.add(path.resolve())
        data = _read(path)
        schema = data.get("schema")
        if schema == RESULT_SCHEMA:
            _check_result(data, path)
            results.append(data)
        elif schema == NOISE_SCHEMA:
            _check_noise(data, path)
            noise.append(data)
        else:
            raise ConfigError(f"{path}: schema {schema!r} is neither {RESULT_SCHEMA!r} nor {NOISE_SCHEMA!r}")
    return results, noise


def load_strength(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The attack-strength comparisons (STRENGTH_FILE) found where load_runs looks, in case order. Optional input:
    runs made outside a gate session have none, and a file of another schema is an error."""
    records: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        found = _run_files(path, (STRENGTH_FILE,)) if path.is_dir() else [path] if path.name == STRENGTH_FILE else []
        for file in found:
            data = _read(file)
            if data.get("schema") != STRENGTH_SCHEMA:
                raise ConfigError(f"{file}: schema {data.get('schema')!r}, expected {STRENGTH_SCHEMA!r}")
            if not isinstance(data.get("case"), str) or not isinstance(data.get("subject"), str):
                raise ConfigError(f"{file}: 'case' and 'subject' must be strings")
            records[data["case"]] = data
    return [records[case] for case in sorted(records)]
