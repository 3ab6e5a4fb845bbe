import pytest


@pytest.fixture(autouse=True)
def _timing_enabled(request):
    # pytest-benchmark turns timing off under xdist; a benchmark that cannot time is skipped, not faked.
    if request.getfixturevalue("benchmark").disabled:
        pytest.skip("benchmark timing is disabled (xdist or --benchmark-disable); "
                    "run: pytest robustness_tests/benchmarks -p no:xdist")
