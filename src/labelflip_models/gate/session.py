"""What one pytest session knows about the gate: whether labelflip was asked for, its settings (parsed once), and
what the end-of-session summary reports. Cheap to import (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..errors import LabelflipError
from .config import DEFAULTS, FLAGS, OPTION_NAMES, OPTIONS, GateConfig, parse_gate_config

GATE_CONFIG = pytest.StashKey[GateConfig]()
GATE_OUTCOMES = pytest.StashKey["GateOutcomes"]()

INI_KEYS = [ini for _, ini, _, _ in OPTIONS] + [f"labelflip_{name.replace('-', '_')}" for name, _ in FLAGS]


@dataclass(eq=False)  # a plugin object: pluggy keeps plugins in sets
class GateOutcomes:
    """The record of the session's gate tests, kept where the reports arrive (under xdist: the controller).
    Registered as a plugin object because pytest_runtest_logreport gets no config to find a stash with."""

    ran: bool = False
    # (nodeid, location, longrepr text, user properties) of each failed gate test
    failures: list[tuple[str, tuple[str, int | None, str], str, dict[str, object]]] = field(default_factory=list)
    obtained: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "labelflip" not in report.keywords:
            return
        self.ran = True
        if report.failed:
            properties = dict(report.user_properties)
            self.failures.append((report.nodeid, report.location, report.longreprtext, properties))
            self.obtained += [str(v) for k, v in report.user_properties if k == "labelflip_obtained"]
            self.obtained += [f"(not written: {v})" for k, v in report.user_properties
                              if k == "labelflip_obtained_error"]


def asked(config: pytest.Config) -> bool:
    """Whether the session names any labelflip option, on the command line or in its ini file."""
    return any(config.getoption(key) not in (None, False) or config.getini(key) is not None for key in INI_KEYS)


def setting(config: pytest.Config, ini: str) -> str:
    """An option's value: the command line's, else the ini file's, else its default."""
    for value in (config.getoption(ini), config.getini(ini)):
        if value is not None:
            return value
    return DEFAULTS[ini]


def flag(config: pytest.Config, ini: str) -> bool:
    return bool(config.getoption(ini) or config.getini(ini))


def gate_config(config: pytest.Config) -> GateConfig:
    """The gate's settings, parsed on first use: at configure time when labelflip options were given (so mistakes
    fail before collection), else when the first gate test is collected."""
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


def outcomes(config: pytest.Config) -> GateOutcomes:
    return config.stash[GATE_OUTCOMES]
