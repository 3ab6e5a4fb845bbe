"""Write a whole report directory: images, summary.md, report.html, and report.json (last: marks it complete)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis.flip_matrix import matrix_from_json
from ..errors import ConfigError
from ..storage.atomic import atomic_write_files
from ..storage.out_dir import check_out_dir
from .group import DatasetRuns, epsilon_label, group_runs, model_sha
from .html import report_html
from .markdown import summary_markdown
from .names import heatmap_name, noise_name, trend_name
from .plots import heatmap_png, noise_png, trend_png

REPORT_SCHEMA = "labelflip.report/2"


def _images(groups: list[DatasetRuns]) -> dict[str, bytes]:
    images: list[tuple[str, bytes]] = []
    for ds in groups:
        images += [(heatmap_name(run), heatmap_png(run)) for run in ds.runs]
        images += [(trend_name(ds.name, attack), trend_png(runs)) for attack, runs in ds.fixed.items()
                   if len(runs) >= 2]
        if ds.noise is not None:
            images.append((noise_name(ds.name), noise_png(ds.noise)))
    names = [name for name, _ in images]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:  # names that differ only in characters a file name cannot hold
        raise ConfigError(f"two runs would both write {', '.join(clashes)}; rename a dataset or attack")
    return dict(images)


def _run_entry(run: dict[str, Any]) -> dict[str, Any]:
    analysis = run.get("analysis") or {}
    sym = analysis.get("symmetry") or {}
    return {"dataset": run["dataset"]["name"], "attack": run["attack"]["name"],
            "epsilon": run["attack"].get("epsilon"), "label": epsilon_label(run),
            "model_sha256": model_sha(run), "n": int(matrix_from_json(run["flip_matrix"]).sum()),
            "clean_accuracy": (run.get("clean_accuracy") or {}).get("rate"),
            "flip_fraction": (run.get("flip_fraction") or {}).get("rate"),
            "symmetry": {n: {k: (sym.get(n) or {}).get(k) for k in ("score", "ci", "p_value")}
                         for n in ("entrywise", "induced")},
            "catch_all": (analysis.get("catch_all") or {}).get("classes"),
            "heatmap": heatmap_name(run)}


def write_report(out_dir: Path, results: Sequence[dict[str, Any]], noise: Sequence[dict[str, Any]],
                 strength: Sequence[dict[str, Any]] = (), verdict: dict[str, Any] | None = None) -> dict[str, Path]:
    """Every file written, keyed by its path relative to `out_dir` (e.g. 'summary.md', 'heatmaps/...png');
    `strength`: a gate session's attack-strength comparisons (load_strength), tabled in their subject's section;
    `verdict`: a gate session's {"passed", "failed": [{"test", "message", "kind"}], "drift": [...]}, shown first."""
    out_dir = check_out_dir(out_dir)
    if not results and not noise:
        raise ConfigError("nothing to report: no attack runs and no noise probes")
    groups = group_runs(results, noise)
    images = _images(groups)
    texts = {"summary.md": summary_markdown(results, noise, strength, verdict),
             "report.html": report_html(results, noise, images, strength, verdict)}
    index = {"schema": REPORT_SCHEMA,
             "runs": [_run_entry(r) for ds in groups for r in ds.runs],
             "trends": [{"dataset": ds.name, "attack": a, "image": trend_name(ds.name, a)}
                        for ds in groups for a in ds.fixed if trend_name(ds.name, a) in images],
             "noise": [{"dataset": ds.name, "model_sha256": model_sha(ds.noise), "n": ds.noise["n"],
                        "top": ds.noise["histogram"]["top"][:3], "image": noise_name(ds.name)}
                       for ds in groups if ds.noise is not None],
             "attack_strength": [{k: v for k, v in r.items() if k != "schema"} for r in strength],
             **({"verdict": verdict} if verdict is not None else {}),
             "summary": "summary.md", "html": "report.html"}
    files = {**images, **{name: text.encode() for name, text in texts.items()},
             "report.json": (json.dumps(index, indent=2) + "\n").encode()}
    atomic_write_files({out_dir / name: data for name, data in files.items()})
    return {name: out_dir / name for name in [*images, *texts, "report.json"]}
