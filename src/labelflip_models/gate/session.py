"""What one pytest session knows about the gate: whether labelflip was asked for, its settings (parsed once), and
what the end-of-session summary reports. Cheap to import (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..errors import LabelflipError
from .config import DEFAULTS, FLAGS, OPTION_NAMES, OPTIONS, GateConfig, parse_gate_config
from .profiles import PROFILES, Case, cases, get_profile

GATE_CONFIG = pytest.StashKey[GateConfig]()
GATE_OUTCOMES = pytest.StashKey["GateOutcomes"]()

# The property the plugin adds to every report of a gate test (a test with the `labelflip` marker).
GATE_TAG = "labelflip_gate"
# The tests of whether the session's evaluation can be trusted (not of a loss of robustness), by the check they
# record: the report lists them in a section of their own, and a failure of one, even before it recorded anything
# (an error), is told apart from "less robust".
EVALUATION_TESTS = {"test_model_checks": "model_checks", "test_large_epsilon_breaks_everything": "large_epsilon",
                    "test_monotone_in_epsilon": "monotone_in_epsilon", "test_covers_single_step": "covers_single_step",
                    "test_converged": "converged", "test_white_box_beats_black_box": "white_box_beats_black_box",
                    "test_attack_strength": "attack_strength"}


def evaluation_check(nodeid: str) -> str | None:
    """The evaluation check a test's node id names (EVALUATION_TESTS), or None for a test of robustness."""
    return EVALUATION_TESTS.get(nodeid.rpartition("::")[2].partition("[")[0])


def evaluation_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """`items` with the gate's evaluation tests ahead of its other tests, in the places the gate's tests (marked
    `labelflip`) hold: the evaluation tests in EVALUATION_TESTS's order (the model checks first, the costly
    comparison with AutoAttack last), the others in theirs; every other test keeps its place."""
    order = {check: i for i, check in enumerate(EVALUATION_TESTS.values())}

    def rank(item: pytest.Item) -> int:
        check = evaluation_check(item.nodeid)
        return len(order) if check is None else order[check]

    places = [i for i, item in enumerate(items) if item.get_closest_marker("labelflip") is not None]
    gate = sorted((items[i] for i in places), key=rank)
    ordered = list(items)
    for place, item in zip(places, gate):
        ordered[place] = item
    return ordered


INI_KEYS = [ini for _, ini, _, _ in OPTIONS] + [f"labelflip_{name.replace('-', '_')}" for name, _ in FLAGS]


@dataclass(eq=False)  # a plugin object: pluggy keeps plugins in sets
class GateOutcomes:
    """The record of the session's gate tests, kept where the reports arrive (under xdist: the controller).
    Registered as a plugin object because pytest_runtest_logreport gets no config to find a stash with."""

    ran: bool = False
    # (nodeid, longrepr text, user properties) of each failed gate test
    failures: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)
    # (nodeid, message) of each drift a passing gate test recorded
    drift: list[tuple[str, str]] = field(default_factory=list)
    # (nodeid, check, passed, message) of each evaluation check that ran
    evaluation: list[tuple[str, str, bool, str]] = field(default_factory=list)
    obtained: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)
    strict: bool = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Not report.keywords: those include the names of the test's folders, which may well be "labelflip".
        if not any(name == GATE_TAG for name, _ in report.user_properties):
            return
        self.ran = True
        properties = dict(report.user_properties)
        if report.when == "call" and report.passed and properties.get("labelflip_drift") == "yes":
            self.drift.append((report.nodeid, str(properties.get("labelflip_message", ""))))
        check = evaluation_check(report.nodeid)
        if check is not None and not report.skipped and (report.when == "call" or report.failed):
            # The decision's own verdict: test_attack_strength passes (it warns) on a weaker attack.
            passed = report.passed and properties.get("labelflip_passed", True) is not False
            lines = report.longreprtext.strip().splitlines()
            message = properties.get("labelflip_message") or (lines[-1] if lines else "")
            self.evaluation.append((report.nodeid, check, passed, str(message)))
        if report.failed:
            self.failures.append((report.nodeid, report.longreprtext, properties))
            self.obtained += [str(v) for k, v in report.user_properties if k == "labelflip_obtained"]
            self.obtained += [f"(not written: {v})" for k, v in report.user_properties
                              if k == "labelflip_obtained_error"]


def asked_on_command_line(config: pytest.Config) -> bool:
    return any(config.getoption(key) not in (None, False) for key in INI_KEYS)


def asked(config: pytest.Config) -> bool:
    """Whether the session names any labelflip option, on the command line or in its ini file."""
    return asked_on_command_line(config) or any(config.getini(key) is not None for key in INI_KEYS)


# Settings that name files or folders. From the command line they are relative to the working directory; from an
# ini file, to the file's folder (as pytest's own path keys are), so that they hold wherever pytest starts.
PATH_KEYS = ("labelflip_model", "labelflip_baselines", "labelflip_data_dir", "labelflip_report",
             "labelflip_class_names", "labelflip_dataset", "labelflip_runs")


def setting(config: pytest.Config, ini: str) -> str:
    """An option's value: the command line's, else the ini file's, else its default."""
    value = config.getoption(ini)
    if value is not None:
        return value
    value = config.getini(ini)
    if value is None:
        return DEFAULTS[ini]
    if ini in PATH_KEYS and value:
        base = config.inipath.parent if config.inipath else config.rootpath
        if ini == "labelflip_class_names":  # a path only as @FILE
            return f"@{base / value[1:]}" if value.startswith("@") else value
        if ini == "labelflip_dataset":  # a path unless it names a built-in dataset
            from ..data.names import DATASETS

            return value if value in DATASETS else str(base / value)
        return str(base / value)  # an absolute value stays as it is
    return value


def flag(config: pytest.Config, ini: str) -> bool:
    return bool(config.getoption(ini) or config.getini(ini))


def gate_config(config: pytest.Config) -> GateConfig:
    """The gate's settings, parsed on first use: at configure time when the command line names labelflip options
    (so mistakes fail before collection), else when the first gate test is collected, so that a repository's other
    test sessions neither load its model nor import torch."""
    if GATE_CONFIG not in config.stash:
        try:
            config.stash[GATE_CONFIG] = parse_gate_config(lambda ini: setting(config, ini),
                                                          lambda ini: flag(config, ini), config.rootpath)
        except LabelflipError as exc:
            raise pytest.UsageError(f"labelflip: {exc.phrased(OPTION_NAMES)}") from None
    return config.stash[GATE_CONFIG]


def start_outcomes(config: pytest.Config) -> None:
    config.stash[GATE_OUTCOMES] = record = GateOutcomes()
    config.pluginmanager.register(record, "labelflip-outcomes")


def selected_cases(config: pytest.Config) -> list[Case] | None:
    """The gate cases the settings select, read without parsing (or checking) the rest of them: what the xdist
    controller needs to schedule, before any worker has collected. None for settings the parse will reject."""
    from ..data.names import DATASETS, dataset_key

    dataset = setting(config, "labelflip_dataset")
    own_model = bool(setting(config, "labelflip_model"))
    if setting(config, "labelflip_profile") not in PROFILES or (dataset and dataset not in DATASETS and not own_model):
        return None
    profile = get_profile(setting(config, "labelflip_profile"))
    return cases(profile, (dataset_key(dataset),) if dataset else profile.datasets, own_model=own_model)


def outcomes(config: pytest.Config) -> GateOutcomes:
    return config.stash[GATE_OUTCOMES]
