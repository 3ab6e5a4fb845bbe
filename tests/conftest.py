import pytest


@pytest.fixture
def pytester_gate(pytester, monkeypatch):
    """pytester for runs of the gate in a child pytest, which gets this process's share of the cores:
    under xdist each worker has fewer threads than cores, and a child using all of them oversubscribes."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return pytester
