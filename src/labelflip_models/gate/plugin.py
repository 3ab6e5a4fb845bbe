"""The labelflip pytest plugin: options, ini keys, markers and hooks of the robustness gate.

Silent until asked: in a session that names no labelflip option (command line or ini file) and collects no gate
test, the hooks change nothing (no torch import, thread settings, warning filters, scheduler or files). The
fixtures live in `fixtures.py` (registered below); the state and logic the hooks use in the rest of `gate/`.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from ..errors import LabelflipError
from .config import FLAGS, OPTION_NAMES, OPTIONS, PER_CLASS_ITEMS, RUNS_DIR
from .profiles import (
    CASE_KINDS,
    checked_model_id,
    epsilon_series,
    iterative_series,
    noise_scope,
    series_id,
    single_step_pairs,
    step_pair_id,
)
from .session import (
    GATE_TAG,
    asked,
    asked_on_command_line,
    evaluation_first,
    gate_config,
    outcomes,
    selected_cases,
    setting,
    start_outcomes,
)

pytest_plugins = ["labelflip_models.gate.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labelflip", "adversarial label-flip regression gate")
    for name, ini, default, help_ in OPTIONS:
        group.addoption(f"--labelflip-{name}", dest=ini, default=None,
                        help=f"{help_} (ini: {ini}; default {default!r})")
        # No default here: an unset key tells the plugin that the ini file does not ask for labelflip.
        parser.addini(ini, help_, default=None)
    for name, help_ in FLAGS:
        ini = f"labelflip_{name.replace('-', '_')}"
        group.addoption(f"--labelflip-{name}", action="store_true", dest=ini, help=f"{help_} (ini: {ini})")
        parser.addini(ini, help_, type="bool", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "labelflip: an adversarial-robustness gate test (labelflip)")
    config.addinivalue_line("markers", "labelflip_cases(kind): parameterise over the profile's gate cases; kind is "
                                       "'all', 'fixed' (fixed-ε attacks), 'minimal' (minimal-perturbation attacks) "
                                       "or 'compared' (fixed-ε attacks outside the AutoAttack family)")
    start_outcomes(config)  # records gate test reports; nothing else
    if asked_on_command_line(config):
        gate_config(config)  # bad options fail here, before any collection
    report = setting(config, "labelflip_report") if asked(config) else ""
    if report and not hasattr(config, "workerinput"):
        # The controller starts the report's runs afresh; workers add the runs they compute.
        shutil.rmtree(Path(report) / RUNS_DIR, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n` with xdist's default `--dist load`, keep each gate case's tests on one worker. Only in sessions
    that name a labelflip setting: the controller collects nothing, so it cannot see gate tests otherwise."""
    selected = selected_cases(config) if asked(config) and config.getvalue("dist") == "load" else None
    if selected is None:
        return None  # not asked for, another distribution mode chosen, or settings the workers will reject
    from .xdist_scheduling import CaseScheduling, scopes

    return CaseScheduling(config, log, scopes(selected))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fixtures = set(metafunc.fixturenames)
    if not {"labelflip_noise_dataset", "labelflip_checked_model", "labelflip_probed_model", "labelflip_epsilon_series",
            "labelflip_step_pair", "labelflip_iterative_series", "labelflip_case", "labelflip_class"} & fixtures:
        return
    try:
        cfg = gate_config(metafunc.config)
    except pytest.UsageError as exc:  # settings from the ini file, parsed when the first gate test is collected
        pytest.fail(str(exc), pytrace=False)
    if "labelflip_noise_dataset" in fixtures:
        metafunc.parametrize("labelflip_noise_dataset", cfg.datasets, ids=[noise_scope(d) for d in cfg.datasets])
    # One case per model under test stands for it: the model checks and the large-ε probe need only its dataset and
    # architecture.
    models = list({(c.dataset, c.arch): c for c in cfg.profile_cases()}.values())
    if "labelflip_checked_model" in fixtures:
        _parametrize(metafunc, "labelflip_checked_model", models, [checked_model_id(c) for c in models],
                     f"profile {cfg.profile!r} has no case for the session's datasets")
    if "labelflip_probed_model" in fixtures:
        _parametrize(metafunc, "labelflip_probed_model", models, [f"{c.model_key}-large-eps" for c in models],
                     f"profile {cfg.profile!r} has no case for the session's datasets")
    if "labelflip_epsilon_series" in fixtures:
        series = epsilon_series(cfg.profile_cases())
        _parametrize(metafunc, "labelflip_epsilon_series", series, [series_id(s[0]) for s in series],
                     f"profile {cfg.profile!r} runs no iterative attack at two ε or more")
    if "labelflip_step_pair" in fixtures:
        pairs = single_step_pairs(cfg.profile_cases())
        _parametrize(metafunc, "labelflip_step_pair", pairs, [step_pair_id(s) for s, _ in pairs],
                     f"profile {cfg.profile!r} runs no FGSM and L∞ PGD case at the same ε")
    if "labelflip_iterative_series" in fixtures:
        series = iterative_series(cfg.profile_cases())
        _parametrize(metafunc, "labelflip_iterative_series", series, [series_id(s[0]) for s in series],
                     f"profile {cfg.profile!r} runs no L∞ PGD")
    if not {"labelflip_case", "labelflip_class"} & fixtures:
        return
    marker = metafunc.definition.get_closest_marker("labelflip_cases")
    kind = marker.args[0] if marker and marker.args else "all"
    if kind not in CASE_KINDS:
        raise pytest.UsageError(f"labelflip_cases({kind!r}): kind must be one of {', '.join(map(repr, CASE_KINDS))}")
    selected = [c for c in cfg.profile_cases() if CASE_KINDS[kind](c)]
    if "labelflip_class" in fixtures:
        names = {d: cfg.class_names_of(d) for d in cfg.datasets}
        # Beyond PER_CLASS_ITEMS classes, one test per case (class None) lists the failing classes.
        pairs = [(c, i) for c in selected
                 for i in (range(len(names[c.dataset])) if len(names[c.dataset]) <= PER_CLASS_ITEMS else (None,))]
        metafunc.parametrize(("labelflip_case", "labelflip_class"), pairs,
                             ids=[f"{c.id}-{'all-classes' if i is None else names[c.dataset][i]}" for c, i in pairs])
    else:
        metafunc.parametrize("labelflip_case", selected, ids=[c.id for c in selected])


def _parametrize(metafunc: pytest.Metafunc, name: str, values: list[Any], ids: list[str], none: str) -> None:
    """Parametrize `name` over `values`; none at all gives one test that skips saying why (`none`), not pytest's
    "got empty parameter set"."""
    if values:
        metafunc.parametrize(name, values, ids=ids)
    else:
        metafunc.parametrize(name, [pytest.param(None, marks=pytest.mark.skip(reason=none))], ids=["none"])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The gate's evaluation tests run before its other gate tests: whether the evaluation can be trusted is the
    first thing to know. Last among the hooks, so that plugins that reorder (--failed-first, random order) keep
    their order within each group."""
    items[:] = evaluation_first(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Tags the reports of gate tests (for the session's summary); a failing gate test that compared a baseline
    writes its case's observed run beside it and names the files it wrote."""
    report = yield
    if item.get_closest_marker("labelflip") is None:
        return report
    report.user_properties.append((GATE_TAG, True))
    compared = {"labelflip_baseline", "labelflip_noise_baseline"} & set(item.fixturenames)
    if report.failed and call.when == "call" and compared:
        from .failures import write_obtained

        try:
            written = write_obtained(gate_config(item.config), item.config.rootpath, getattr(item, "funcargs", {}))
            properties = [("labelflip_obtained", str(path)) for path in written]
        except (LabelflipError, OSError, pytest.UsageError) as exc:
            properties = [("labelflip_obtained_error", str(exc))]
        # The call report feeds the session's summary; JUnit XML takes the item's properties at teardown.
        report.user_properties += properties
        item.user_properties += properties
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    record = outcomes(config)
    if hasattr(config, "workerinput") or not record.ran:
        return
    cfg = gate_config(config)
    from .failures import orphans

    record.orphans, record.strict = orphans(cfg), cfg.strict
    if cfg.strict and record.orphans and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if cfg.report is None or not (cfg.report / RUNS_DIR).is_dir():
        return  # no report asked for, or no gate case ran
    from ..reports import load_runs, load_strength, write_report
    from .failures import verdict

    try:
        results, noise = load_runs([cfg.report / RUNS_DIR])
        written = write_report(cfg.report, results, noise, load_strength([cfg.report / RUNS_DIR]),
                               verdict(record))
    except LabelflipError as exc:
        _write_line(config, f"labelflip: report not written: {exc.phrased(OPTION_NAMES)}", red=True)
        return
    summary = written.get("summary.md", cfg.report)
    _write_line(config, f"labelflip: report written to {cfg.report} (summary: {summary})")


def _write_line(config: pytest.Config, text: str, **markup: bool) -> None:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.write_line(text, **markup)  # on a line of its own, after the progress dots


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    record = outcomes(config)
    if not record.ran:
        return
    from .failures import github_annotations, summary_lines

    lines = summary_lines(record.failures, record.orphans, record.obtained, record.strict, record.drift)
    if lines:
        terminalreporter.write_sep("=", "labelflip gate")
        for line in lines:
            terminalreporter.write_line(line)
    for line in github_annotations(record.failures, config.rootpath):
        terminalreporter.write_line(line)
