"""The gate's tests, shipped with the package: a repository runs them through one generated file
(`labelflip init`), which imports them, or with `pytest --pyargs labelflip_models.gate.tests`."""

import pytest

GATE_MARKS = (
    pytest.mark.labelflip,
    # Foolbox's Brendel-Bethge hands eagerpy read-only arrays it never writes to: not the user's to act on.
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning"),
    # The gate's figures are test properties on purpose; pytest writes them to JUnit XML whatever junit_family is
    # (a strict xunit2 schema validator would want junit_family = "legacy").
    pytest.mark.filterwarnings("ignore:record_property is incompatible with junit_family"),
)


def gate_test(cases: str | None = None):
    """Mark a gate test; `cases` ("all", "fixed", "minimal") parameterises it over the profile's gate cases."""
    marks = GATE_MARKS + ((pytest.mark.labelflip_cases(cases),) if cases else ())

    def mark(test):
        for m in marks:
            test = m(test)
        return test

    return mark
