"""The gate's tests, shipped with the package: a repository runs them through one generated file
(`labelflip init`), which imports them, or with `pytest --pyargs labelflip_models.gate.tests`."""

from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T", bound=Callable)

GATE_MARKS = (
    pytest.mark.labelflip,
    # Foolbox's Brendel-Bethge hands eagerpy read-only arrays it never writes to: not the user's to act on.
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning"),
)


def gate_test(cases: str | None = None) -> Callable[[T], T]:
    """Mark a gate test; `cases` (a key of gate/profiles.py's CASE_KINDS) parameterises it over the profile's gate
    cases of that kind."""
    marks = GATE_MARKS + ((pytest.mark.labelflip_cases(cases),) if cases else ())

    def mark(test: T) -> T:
        for m in marks:
            test = m(test)
        return test

    return mark
