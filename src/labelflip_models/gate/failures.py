"""What a failing gate tells its reviewer: the observed run beside the baseline ("obtained" files), a terminal
section of the regressions, worst first, GitHub Actions annotations, and a library error as one failed test.
Cheap to import (no torch)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import LabelflipError
from .config import OPTION_NAMES, REFERENCE_BASELINES, GateConfig, in_source_checkout
from .profiles import Case, cases, get_profile, noise_baseline_path
from .session import evaluation_check

if TYPE_CHECKING:
    from .decisions import Decision
    from .session import GateOutcomes

PROPERTY_PREFIX = "labelflip_"
# The recorded check names of the per-class flip-rate test, which the summary's table lists.
FLIP_RATE = "flip_rate"
# Under the rootdir: the observed runs of cases that failed against the installed reference baselines.
INSTALLED_OBTAINED = "labelflip-obtained"


@contextmanager
def failing_the_test(prefix: str = "") -> Iterator[None]:
    """A library error inside the block fails the current test with its message alone (no traceback)."""
    try:
        yield
    except LabelflipError as exc:
        raise pytest.fail.Exception(prefix + exc.phrased(OPTION_NAMES), pytrace=False) from None


def record_decision(record: Callable[[str, object], None], check: str, decision: Decision,
                    **figures: object) -> None:
    """Record a gate decision as test properties (`record(name, value)`): JUnit XML carries them, and xdist
    forwards them to the controller, whose end-of-session summary reads them."""
    values = {"check": check, **figures, "passed": decision.passed, **decision.figures, "message": decision.message}
    from .decisions import plain  # numpy and scipy: not at the plugin's import

    for name, value in values.items():
        record(PROPERTY_PREFIX + name, plain(value))


def obtained_root(cfg: GateConfig, rootpath: Path) -> Path:
    """Where a failing case's observed run goes: beside its baseline, except for the reference baselines of an
    installed package (no place to write), whose failing runs go to a folder of the rootdir in the same layout."""
    if cfg.baselines == REFERENCE_BASELINES and not in_source_checkout(REFERENCE_BASELINES):
        return rootpath / INSTALLED_OBTAINED
    return cfg.baselines


def write_obtained(cfg: GateConfig, rootpath: Path, funcargs: dict[str, Any]) -> list[Path]:
    """Write the observed run of a failing gate test's case (or white-noise probe) in the baseline's schema; the
    files written. Nothing under --labelflip-regen."""
    from .baselines import IMAGES, OBTAINED, noise_obtained_path, write_baseline, write_noise_baseline

    if cfg.regen:
        return []
    root = obtained_root(cfg, rootpath)
    if "labelflip_case" in funcargs and "labelflip_run" in funcargs:
        case: Case = funcargs["labelflip_case"]
        run = funcargs["labelflip_run"](case)
        path = write_baseline(case, root, run.result, run.outcomes(), obtained=True)
        return [path, case.baseline_path(root, f"{OBTAINED}.csv"), case.baseline_path(root, f"{OBTAINED}{IMAGES}")]
    if "labelflip_noise_dataset" in funcargs and "labelflip_noise" in funcargs:
        dataset = funcargs["labelflip_noise_dataset"]
        path = noise_obtained_path(noise_baseline_path(root, cfg.profile, dataset))
        return [write_noise_baseline(path, funcargs["labelflip_noise"](dataset), cfg.profile, obtained=True)]
    return []


def orphans(cfg: GateConfig) -> list[Path]:
    """The baseline files in the profile's folder that no case of the session's selection uses."""
    from ..data import DATASETS
    from .baselines import IMAGES, orphan_baselines

    selected = cases(get_profile(cfg.profile), cfg.datasets, own_model=cfg.model is not None)
    used = {c.baseline_path(cfg.baselines, s) for c in selected for s in (".json", ".csv", IMAGES)}
    used |= {noise_baseline_path(cfg.baselines, cfg.profile, d) for d in cfg.datasets}
    return orphan_baselines(cfg.baselines, cfg.profile, cfg.datasets, DATASETS + cfg.datasets, used)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _figures(properties: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(PROPERTY_PREFIX): v for k, v in properties.items() if k.startswith(PROPERTY_PREFIX)}


def summary_lines(failures: list[tuple[str, str, dict[str, Any]]], orphan_files: list[Path],
                  obtained: list[str], strict: bool = False, drift: list[tuple[str, str]] = ()) -> list[str]:
    """The terminal section: classes less robust (flip rate risen beyond the margin), largest rise first, then the
    other failing gate tests, drift, the obtained files to review, and orphan baselines."""
    lines = []
    figures = [(nodeid, text, _figures(p)) for nodeid, text, p in failures]
    rates = [f for _, _, f in figures if f.get("check") == FLIP_RATE and "rise" in f]
    if rates:
        def rise(f: dict[str, Any]) -> float:
            return _number(f.get("rise"))

        lines.append(f"{len(rates)} class(es) less robust, largest rise first (flip rate now vs the baseline; the "
                     "gate fails a rise it is confident exceeds the margin):")
        for f in sorted(rates, key=rise, reverse=True):
            lines.append(f"  {f['case']}  {f['class']!r}: {f['flips']}/{f['n']} = {_number(f['rate']):.3f} vs "
                         f"baseline {_number(f.get('baseline_rate')):.3f}: rise {rise(f):+.3f} > margin "
                         f"{_number(f.get('margin')):.2f} (p={_number(f.get('p_value')):.2g}, "
                         f"{'paired' if f.get('paired') == 'yes' else 'unpaired'})")
    others = [(nodeid, text, f) for nodeid, text, f in figures if not (f.get("check") == FLIP_RATE and "rise" in f)]
    if others:
        lines.append(f"{len(others)} other failing gate test(s):")
        lines += [f"  {nodeid}: {f.get('message') or _first_line(text)}" for nodeid, text, f in others]
    if drift:
        lines.append(f"{len(drift)} drift item(s): where flips or white noise land changed (every retrain changes it; "
                     "not a loss of robustness; --labelflip-fail-on-drift fails on them):")
        lines += [f"  {nodeid}: {message}" for nodeid, message in drift]
    if obtained:
        lines.append("observed runs written beside their baselines (diff them; if the change was intended, promote "
                     "them with --labelflip-regen):")
        lines += [f"  {path}" for path in sorted(set(obtained))]
    if orphan_files:
        consequence = "the session fails on them (--labelflip-strict)" if strict else "--labelflip-strict fails on them"
        lines.append(f"{len(orphan_files)} baseline file(s) that no selected case uses ({consequence}):")
        lines += [f"  {path}" for path in orphan_files]
    return lines


def failure_kind(nodeid: str, properties: dict[str, object]) -> str:
    """Why a gate test failed: "evaluation" (an evaluation check), "less robust" (a decision against a baseline),
    "drift" (a drift decision, failing under --labelflip-fail-on-drift) or "not decided" (no decision was
    recorded that said no: an error, a missing baseline, a baseline --labelflip-regen refused to write)."""
    if evaluation_check(nodeid) is not None:
        return "evaluation"
    if PROPERTY_PREFIX + "check" not in properties or properties.get(PROPERTY_PREFIX + "passed") is True:
        return "not decided"
    return "drift" if properties.get(PROPERTY_PREFIX + "drift") == "yes" else "less robust"


def verdict(outcomes: GateOutcomes) -> dict[str, Any]:
    """The session's verdict as the report shows it; each failed test with its `failure_kind`."""
    failed = [{"test": nodeid, "message": str(p.get(PROPERTY_PREFIX + "message") or _first_line(text)),
               "kind": failure_kind(nodeid, p)}
              for nodeid, text, p in outcomes.failures]
    return {"passed": not failed, "failed": failed,
            "drift": [{"test": nodeid, "message": message} for nodeid, message in outcomes.drift],
            "evaluation": [{"test": nodeid, "check": check, "passed": passed, "message": message}
                           for nodeid, check, passed, message in outcomes.evaluation]}


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith("E ")]
    return (failed[0][1:].strip() if failed else lines[-1] if lines else "failed")


def _escape(text: str, properties: bool = False) -> str:
    # GitHub's workflow-command escaping: data escapes %, CR, LF; property values also : and ,.
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if properties else text


def github_annotations(failures: list[tuple[str, str, dict[str, Any]]], rootpath: Path) -> list[str]:
    """`::error` workflow commands, one per failing gate test, when running on GitHub Actions."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return []
    workspace = Path(os.environ.get("GITHUB_WORKSPACE") or os.getcwd()).resolve()
    lines = []
    for nodeid, text, p in failures:
        # The test file in the user's repository (node ids are relative to the rootdir), not the shipped module;
        # GitHub reads the path relative to the workspace.
        file, _, name = nodeid.partition("::")
        path = (rootpath / file).resolve()
        path = path.relative_to(workspace).as_posix() if path.is_relative_to(workspace) else path.as_posix()
        title = _escape(f"labelflip: {name}", True)
        message = _escape(str(p.get(PROPERTY_PREFIX + "message") or _first_line(text)))
        lines.append(f"::error file={_escape(path, True)},title={title}::{message}")
    return lines
