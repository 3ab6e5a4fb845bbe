"""The labelflip pytest plugin: options, ini keys, markers and hooks of the robustness gate.

The fixtures live in `fixtures.py` (registered below), the state and logic they use in the rest of `gate/`. Heavy
imports (torch, foolbox) happen inside fixtures and hooks that need them, so loading the plugin costs nothing for
test sessions that do not use it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from ..errors import LabelflipError
from .config import FLAGS, OPTION_NAMES, OPTIONS, RUNS_DIR, GateConfig, parse_gate_config
from .fixtures import GATE_CONFIG
from .profiles import COMPILED_PER_PROCESS, cases, get_profile, noise_scope

pytest_plugins = ["labelflip_models.gate.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labelflip", "adversarial label-flip regression gate")
    for name, ini, default, help_ in OPTIONS:
        group.addoption(f"--labelflip-{name}", dest=ini, default=None,
                        help=f"{help_} (ini: {ini}; default {default!r})")
        parser.addini(ini, help_, default=default)
    for name, help_ in FLAGS:
        group.addoption(f"--labelflip-{name}", action="store_true", dest=f"labelflip_{name.replace('-', '_')}",
                        help=help_)


def _setting(config: pytest.Config, ini: str) -> str:
    value = config.getoption(ini)
    return value if value is not None else config.getini(ini)


def pytest_configure(config: pytest.Config) -> None:
    try:
        # Parsed and validated once, so bad options fail before any collection.
        config.stash[GATE_CONFIG] = cfg = parse_gate_config(
            lambda ini: _setting(config, ini), config.getoption, config.rootpath)
    except LabelflipError as exc:
        raise pytest.UsageError(f"labelflip: {exc.phrased(OPTION_NAMES)}") from None
    config.addinivalue_line("markers", "labelflip: an adversarial-robustness gate test (labelflip)")
    config.addinivalue_line("markers", "labelflip_cases(kind): parameterise over the profile's gate cases; kind is "
                                       "'all', 'fixed' (fixed-ε attacks) or 'minimal' (minimal-perturbation attacks)")
    if cfg.report is not None and not hasattr(config, "workerinput"):
        # The controller starts the report afresh; workers add the runs they compute.
        shutil.rmtree(cfg.report / RUNS_DIR, ignore_errors=True)
    # foolbox 3.3.4 imports a deprecated scipy namespace; the warning is not the user's to act on.
    config.addinivalue_line("filterwarnings", "ignore:Please import `gaussian_filter`:DeprecationWarning")
    # Foolbox's Brendel-Bethge hands eagerpy read-only arrays; it never writes to them.
    config.addinivalue_line("filterwarnings", "ignore:The given NumPy array is not writable:UserWarning")
    # From workerinput, not the environment: a pytest started inside a worker inherits the worker's env.
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        # Each xdist worker gets its share of the cores instead of all of them (oversubscription is slow).
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n` with xdist's default `--dist load`, keep each gate case's tests on one worker."""
    if config.getvalue("dist") != "load":
        return None  # the user chose a distribution mode; respect it
    from .xdist_scheduling import CaseScheduling

    cfg: GateConfig = config.stash[GATE_CONFIG]
    # Cases of attacks that compile per process (numba) share a worker, so each process compiles at most once.
    scopes = {c.id: c.attack if c.attack in COMPILED_PER_PROCESS else c.id
              for c in cases(get_profile(cfg.profile), cfg.datasets, own_model=cfg.model is not None)}
    return CaseScheduling(config, log, scopes | {noise_scope(d): noise_scope(d) for d in cfg.datasets})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from ..data import CLASS_NAMES

    cfg: GateConfig = metafunc.config.stash[GATE_CONFIG]
    if "labelflip_noise_dataset" in metafunc.fixturenames:
        metafunc.parametrize("labelflip_noise_dataset", cfg.datasets, ids=[noise_scope(d) for d in cfg.datasets])
    if not {"labelflip_case", "labelflip_class"} & set(metafunc.fixturenames):
        return
    marker = metafunc.definition.get_closest_marker("labelflip_cases")
    kind = marker.args[0] if marker and marker.args else "all"
    if kind not in ("all", "fixed", "minimal"):
        raise pytest.UsageError(f"labelflip_cases({kind!r}): kind must be 'all', 'fixed' or 'minimal'")
    selected = [c for c in cases(get_profile(cfg.profile), cfg.datasets, own_model=cfg.model is not None)
                if kind == "all" or c.minimal == (kind == "minimal")]
    if "labelflip_class" in metafunc.fixturenames:
        names = {d: cfg.class_names or CLASS_NAMES[d] for d in cfg.datasets}
        pairs = [(c, i) for c in selected for i in range(len(names[c.dataset]))]
        metafunc.parametrize(("labelflip_case", "labelflip_class"), pairs,
                             ids=[f"{c.id}-{names[c.dataset][i]}" for c, i in pairs])
    else:
        metafunc.parametrize("labelflip_case", selected, ids=[c.id for c in selected])


def pytest_sessionfinish(session: pytest.Session) -> None:
    cfg = session.config.stash.get(GATE_CONFIG, None)
    if cfg is None or cfg.report is None or hasattr(session.config, "workerinput"):
        return
    if not (cfg.report / RUNS_DIR).is_dir():
        return  # no gate case ran
    from ..reports import load_runs, write_report

    try:
        results, noise = load_runs([cfg.report / RUNS_DIR])
        written = write_report(cfg.report, results, noise)
    except LabelflipError as exc:
        session.config.get_terminal_writer().line(f"labelflip: report not written: {exc.phrased(OPTION_NAMES)}",
                                                  red=True)
        return
    summary = written.get("summary.md", cfg.report)
    session.config.get_terminal_writer().line(f"labelflip: report written to {cfg.report} (summary: {summary})")
