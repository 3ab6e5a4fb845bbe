"""pytest-benchmark reports of labelflip's kernels: a Markdown table, a committed baseline, and a regression verdict.

Each labelflip benchmark records `ratio_to_reference`: its best time / the best time of the plain eager fp32 PyTorch
loop doing the same work, measured side by side in the same run. Machine speed and background load mostly cancel out
of that ratio, so a baseline keeps ratios and `compare` judges them; images/s are kept for information only. Ratios
still differ between kinds of hardware (bf16 units, GPUs), hence `device_class`: a baseline only judges runs of its
own class. Torch-free, so CI can judge a report without installing torch.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..provenance import now_iso
from ..storage.atomic import atomic_write_text

BASELINE_SCHEMA = "labelflip.bench-baseline/1"
REFERENCE = "reference"
RUN_HINT = "run: pytest robustness_tests/benchmarks -p no:xdist --benchmark-json=FILE"
DASH = "–"

OK, IMPROVED, REGRESSED, MISSING, NEW = "ok", "improved", "regressed", "missing", "new"
# Only labelflip's own kernels are gated; other implementations are timed for comparison, and a change of their
# speed is not a regression of ours.
GATED_IMPL = "labelflip"
# The other implementations' columns of the table, in this order, where a report has them.
OTHER_IMPLS = ("foolbox", "pyautoattack", "torchattacks")


@dataclass(frozen=True)
class BenchRow:
    kernel: str
    impl: str
    device: str
    device_class: str
    images_per_s: float
    ratio_to_reference: float
    gflops_per_s: float | None
    reference_images_per_s: float | None  # the plain loop's speed, timed alongside this entry


@dataclass(frozen=True)
class BenchReport:
    rows: list[BenchRow]
    machine: str
    device_class: str
    datetime: str
    version: str
    source: Path


def _read_json(path: Path, what: str, hint: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is not JSON: {exc}") from None


def _check_ratio(ratio: float, where: str) -> float:
    if not (math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"{where}: ratio_to_reference must be a finite positive number, got {ratio}")
    return ratio


def _row(path: Path, name: str, info: dict[str, Any]) -> BenchRow:
    try:
        gflops, reference = info.get("gflops_per_s"), info.get("reference_images_per_s")
        return BenchRow(kernel=str(info["kernel"]), impl=str(info["impl"]), device=str(info["device"]),
                        device_class=str(info["device_class"]), images_per_s=float(info["images_per_s"]),
                        ratio_to_reference=_check_ratio(float(info["ratio_to_reference"]), f"{path}: {name}"),
                        gflops_per_s=None if gflops is None else float(gflops),
                        reference_images_per_s=None if reference is None else float(reference))
    except KeyError as exc:
        raise ConfigError(f"{path}: benchmark {name} has no {exc} in extra_info; {RUN_HINT}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: benchmark {name} has a malformed extra_info ({exc})") from None


def load_report(path: Path | str) -> BenchReport:
    """The labelflip entries (those with a `kernel` in extra_info) of a `pytest --benchmark-json` report."""
    path = Path(path)
    data = _read_json(path, "benchmark report", RUN_HINT)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ConfigError(f'{path} is not a pytest-benchmark JSON report (no "benchmarks" list); {RUN_HINT}')
    rows = []
    for entry in data["benchmarks"]:
        info = entry.get("extra_info") if isinstance(entry, dict) else None
        if isinstance(info, dict) and "kernel" in info:
            rows.append(_row(path, entry.get("name", "?"), info))
    if not rows:
        raise ConfigError(f'{path} holds no labelflip benchmark (none has a "kernel" in extra_info); {RUN_HINT}')
    # Comparisons are keyed by (kernel, impl) under one device class: anything else would be judged ambiguously.
    keys = [(r.kernel, r.impl) for r in rows]
    duplicates = sorted({f"{k}/{i}" for k, i in keys if keys.count((k, i)) > 1})
    if duplicates:
        raise ConfigError(f"{path} has more than one benchmark for {', '.join(duplicates)}")
    classes = sorted({r.device_class for r in rows})
    if len(classes) > 1:
        raise ConfigError(f"{path} mixes device classes {', '.join(classes)}; a report must come from one kind of "
                          "hardware")
    machine_info = data.get("machine_info") or {}
    cpu = (machine_info.get("cpu") or {}).get("brand_raw") or machine_info.get("processor") or "unknown CPU"
    return BenchReport(rows=rows, machine=cpu, device_class=classes[0], datetime=str(data.get("datetime", "?")),
                       version=str(data.get("version", "?")), source=path)


def _speed(row: BenchRow | None) -> str:
    return DASH if row is None else f"{row.images_per_s:,.0f}"


def _ratio(row: BenchRow | None) -> str:
    if row is None:
        return DASH
    r = row.ratio_to_reference
    reading = f"{1 / r:.1f}× faster" if r < 1 else f"{r:.1f}× slower" if r > 1 else "same"
    return f"{r:.2f} ({reading})"


def markdown_table(report: BenchReport) -> str:
    """One row per kernel: labelflip, the other implementations the report timed (OTHER_IMPLS; torchattacks at
    least) and the plain reference loop side by side."""
    present = {r.impl for r in report.rows}
    others = [i for i in OTHER_IMPLS if i in present or i == "torchattacks"]
    lines = [f"### Benchmarks on {report.machine}, {report.device_class}, {report.datetime}", "",
             "| kernel | device | labelflip images/s | labelflip ratio_to_reference | "
             + "".join(f"{i} images/s | {i} ratio | " for i in others) + "reference images/s | labelflip GFLOP/s |",
             "|---|---|--:|--:|" + "--:|--:|" * len(others) + "--:|--:|"]
    for kernel in sorted({r.kernel for r in report.rows}):
        by_impl = {r.impl: r for r in report.rows if r.kernel == kernel}
        ours, ref = by_impl.get(GATED_IMPL), by_impl.get(REFERENCE)
        theirs = [by_impl.get(i) for i in others]
        device = (ours or next(iter(by_impl.values()))).device
        gflops = DASH if ours is None or ours.gflops_per_s is None else f"{ours.gflops_per_s:,.1f}"
        timed_alongside = next((r.reference_images_per_s for r in (ours, *theirs) if r and r.reference_images_per_s),
                               None)
        ref_speed = _speed(ref) if ref or timed_alongside is None else f"{timed_alongside:,.0f}"
        cells = [kernel, device, _speed(ours), _ratio(ours)] + [c for r in theirs for c in (_speed(r), _ratio(r))]
        lines.append("| " + " | ".join(cells + [ref_speed, gflops]) + " |")
    return "\n".join(lines) + "\n"


def make_baseline(*reports: BenchReport) -> dict[str, Any]:
    """What a later run is judged against: every non-reference entry's ratio, under the reports' device class.

    With several reports (runs of one commit) each ratio is their median: one run's ratios move by up to ~25%
    on a 2-core CPU, and a baseline taken from a lucky run would fail honest runs after it.
    """
    classes = sorted({r.device_class for r in reports})
    if len(classes) != 1:
        raise ConfigError(f"a baseline needs reports of one device class, got {', '.join(classes) or 'none'}")
    samples: dict[tuple[str, str], list[BenchRow]] = {}
    for report in reports:
        for r in report.rows:
            if r.impl != REFERENCE:
                samples.setdefault((r.kernel, r.impl), []).append(r)
    if not samples:
        raise ConfigError(f"{', '.join(str(r.source) for r in reports)} hold only reference-loop benchmarks; "
                          "a baseline would judge nothing")
    kernels: dict[str, dict[str, dict[str, float]]] = {}
    for (kernel, impl), rows in sorted(samples.items()):
        kernels.setdefault(kernel, {})[impl] = {
            "ratio_to_reference": statistics.median(r.ratio_to_reference for r in rows),
            "images_per_s": statistics.median(r.images_per_s for r in rows), "runs": len(rows)}
    return {"schema": BASELINE_SCHEMA, "device_class": classes[0], "kernels": kernels,
            "provenance": {"machine": reports[0].machine, "run_datetimes": [r.datetime for r in reports],
                           "pytest_benchmark_version": reports[0].version,
                           "sources": [r.source.name for r in reports], "created": now_iso()}}


def write_baseline(path: Path | str, baseline: dict[str, Any]) -> None:
    """StorageError (nothing written) if `path` cannot be written."""
    atomic_write_text(Path(path), json.dumps(baseline, indent=2, sort_keys=True) + "\n")


def load_baseline(path: Path | str) -> dict[str, Any]:
    """The file as written by `write_baseline`; `compare` checks its contents."""
    return _read_json(Path(path), "benchmark baseline", "write one with: labelflip bench-baseline REPORT --out FILE")


def _baseline_ratios(baseline: Any) -> tuple[str, dict[tuple[str, str], float]]:
    schema = baseline.get("schema") if isinstance(baseline, dict) else None
    if schema != BASELINE_SCHEMA:
        raise ConfigError(f"not a benchmark baseline: schema is {schema!r}, expected {BASELINE_SCHEMA!r}")
    try:
        ratios = {(kernel, impl): _check_ratio(float(entry["ratio_to_reference"]), f"baseline {kernel}/{impl}")
                  for kernel, impls in baseline["kernels"].items() for impl, entry in impls.items()}
        return str(baseline["device_class"]), ratios
    except KeyError as exc:
        raise ConfigError(f"benchmark baseline has no {exc} key") from None
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed benchmark baseline ({exc})") from None


@dataclass(frozen=True)
class Verdict:
    kernel: str
    impl: str
    baseline: float | None
    current: float | None
    verdict: str

    @property
    def change(self) -> float | None:
        return None if self.baseline is None or self.current is None else self.current / self.baseline - 1


def _num(x: float | None) -> str:
    return DASH if x is None else f"{x:.3g}"


@dataclass(frozen=True)
class Comparison:
    margin: float
    baseline_class: str
    current_class: str
    verdicts: list[Verdict]

    @property
    def comparable(self) -> bool:
        return self.baseline_class == self.current_class

    @property
    def regressions(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.impl == GATED_IMPL and v.verdict in (REGRESSED, MISSING)]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    def _margin(self) -> str:
        return f"{self.margin * 100:g}%"

    def markdown(self) -> str:
        if not self.comparable:
            return (f"**Not comparable**: the baseline was measured on `{self.baseline_class}`, this run on "
                    f"`{self.current_class}`. Ratios to the reference loop only compare on the same kind of hardware, "
                    "so nothing was compared.\n")
        lines = [f"### Benchmark ratios against the baseline (margin {self._margin()})", "",
                 "| kernel | impl | baseline ratio | current ratio | change | verdict |", "|---|---|--:|--:|--:|---|"]
        for v in self.verdicts:
            change = DASH if v.change is None else f"{v.change:+.1%}"
            gated = "" if v.impl == GATED_IMPL else " (for information)"
            lines.append(f"| {v.kernel} | {v.impl} | {_num(v.baseline)} | {_num(v.current)} | {change} | "
                         f"{v.verdict}{gated} |")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        if not self.comparable:
            return (f"not comparable: baseline device class {self.baseline_class!r}, this run "
                    f"{self.current_class!r}; nothing compared")
        if self.failed:
            parts = [f"{v.kernel}/{v.impl} missing from this run" if v.current is None else
                     f"{v.kernel}/{v.impl} ratio {_num(v.baseline)} → {_num(v.current)} ({v.change:+.1%})"
                     for v in self.regressions]
            return f"regression beyond the {self._margin()} margin: " + "; ".join(parts)
        counts = {what: sum(v.verdict == what for v in self.verdicts) for what in (OK, IMPROVED, NEW)}
        return (f"no regression beyond the {self._margin()} margin ({counts[OK] + counts[IMPROVED]} compared, "
                f"{counts[IMPROVED]} improved, {counts[NEW]} new)")


def _verdict(baseline: float | None, current: float | None, margin: float) -> str:
    if current is None:
        return MISSING  # a kernel that disappeared is a regression, not a pass
    if baseline is None:
        return NEW
    if current > baseline * (1 + margin):
        return REGRESSED
    if current < baseline / (1 + margin):
        return IMPROVED
    return OK


def compare(report: BenchReport, baseline: dict[str, Any], margin: float) -> Comparison:
    """Judge every non-reference (kernel, impl) of `report` against `baseline`: a ratio above baseline·(1+margin)
    regressed, one below baseline/(1+margin) improved."""
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin must be a finite number >= 0, got {margin}")
    device_class, before = _baseline_ratios(baseline)
    if device_class != report.device_class:
        return Comparison(margin, device_class, report.device_class, [])
    now = {(r.kernel, r.impl): r.ratio_to_reference for r in report.rows if r.impl != REFERENCE}
    verdicts = []
    for kernel, impl in sorted(before.keys() | now.keys()):
        was, got = before.get((kernel, impl)), now.get((kernel, impl))
        verdicts.append(Verdict(kernel, impl, was, got, _verdict(was, got, margin)))
    return Comparison(margin, device_class, report.device_class, verdicts)
