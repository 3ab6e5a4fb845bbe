import pytest


def pytest_collection_modifyitems(config, items):
    # pytest-benchmark cannot time under xdist (or with --benchmark-disable). Skipping at collection,
    # not in a fixture, keeps the module-scoped model fixtures from loading for nothing.
    if hasattr(config, "workerinput") or config.getoption("benchmark_disable"):
        skip = pytest.mark.skip(reason="benchmark timing is disabled (xdist or --benchmark-disable); "
                                       "run: pytest robustness_tests/benchmarks -p no:xdist")
        for item in items:
            if "benchmark" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)
