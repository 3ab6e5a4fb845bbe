"""Organise runs by subject: a dataset, or a dataset and one of its non-default reference models (CIFAR-10 has
two). A report compares attacks on one model per subject: mixing models is an error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..models.reference import REFERENCE_ARCHS


def is_minimal(result: dict[str, Any]) -> bool:
    attack = result["attack"]
    return bool(attack.get("minimal")) or attack.get("epsilon") is None


def epsilon_label(result: dict[str, Any]) -> str:
    return "minimal" if is_minimal(result) else f"{result['attack']['epsilon']:g}"


def model_sha(run: dict[str, Any]) -> str | None:
    model = run.get("model")
    return model.get("sha256") if isinstance(model, dict) else None


def subject(run: dict[str, Any]) -> str:
    """The run's dataset, plus its reference architecture when that is not the dataset's default (as in case ids)."""
    name = run["dataset"]["name"]
    model = run.get("model") if isinstance(run.get("model"), dict) else {}
    arch = model.get("arch")
    default = REFERENCE_ARCHS.get(name, (None,))[0]
    return f"{name}-{arch}" if arch and default and arch != default else name


@dataclass(frozen=True)
class DatasetRuns:
    name: str
    model_sha: str | None
    fixed: dict[str, list[dict[str, Any]]]  # attack name -> its runs, ε ascending
    minimal: list[dict[str, Any]]
    noise: dict[str, Any] | None

    @property
    def runs(self) -> list[dict[str, Any]]:
        return [r for runs in self.fixed.values() for r in runs] + self.minimal

    @property
    def all_runs(self) -> list[dict[str, Any]]:
        """Attack runs and the noise probe: everything whose provenance the report states."""
        return self.runs + ([self.noise] if self.noise is not None else [])

    def strongest(self) -> dict[str, Any] | None:
        """The fixed run with the most flips, L∞ attacks first (ε of different norms do not compare): where
        flips, and their structure, are clearest."""
        last = [runs[-1] for runs in self.fixed.values()]
        return max(last, default=None, key=lambda r: (r["attack"].get("norm", "linf") == "linf",
                                                      (r.get("flip_fraction") or {}).get("count") or 0))


def group_runs(results: Sequence[dict[str, Any]], noise: Sequence[dict[str, Any]]) -> list[DatasetRuns]:
    """Datasets in name order; attacks in name order, each over ε ascending; minimal attacks last."""
    by_dataset: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for r in results:
        by_dataset.setdefault(subject(r), ([], []))[0].append(r)
    for p in noise:
        by_dataset.setdefault(subject(p), ([], []))[1].append(p)
    groups = []
    for name in sorted(by_dataset):
        runs, probes = by_dataset[name]
        shas = {model_sha(r) for r in runs + probes}
        if len(shas) > 1:
            raise ConfigError(f"runs for dataset {name!r} come from {len(shas)} different models "
                              f"({', '.join(sorted(str(s)[:12] for s in shas))}); report each model separately")
        if len(probes) > 1:
            raise ConfigError(f"{len(probes)} white-noise probes for dataset {name!r}; give at most one")
        seen: set[tuple[str, str]] = set()
        for r in runs:
            key = (r["attack"]["name"], epsilon_label(r))
            if key in seen:
                raise ConfigError(f"two runs of {key[0]} at ε = {key[1]} on dataset {name!r}; give each once")
            seen.add(key)
        fixed: dict[str, list[dict[str, Any]]] = {}
        for r in sorted((r for r in runs if not is_minimal(r)),
                        key=lambda r: (r["attack"]["name"], r["attack"]["epsilon"])):
            fixed.setdefault(r["attack"]["name"], []).append(r)
        minimal = sorted((r for r in runs if is_minimal(r)), key=lambda r: r["attack"]["name"])
        groups.append(DatasetRuns(name, shas.pop(), fixed, minimal, probes[0] if probes else None))
    return groups
