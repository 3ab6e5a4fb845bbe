import pytest


@pytest.fixture
def pytester_gate(pytester, monkeypatch):
    """pytester for runs of the gate in a child pytest, which gets this process's share of the cores:
    under xdist each worker has fewer threads than cores, and a child using all of them oversubscribes."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return pytester


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, test images, test labels): a model trained for seconds on random digit-shaped data."""
    from labelflip_models.model_cache import load_or_train

    from .helpers import TINY_RECIPE, tiny_dataset

    data = tiny_dataset()
    model = load_or_train(data, recipe=TINY_RECIPE, root=tmp_path_factory.mktemp("cache")).model
    return model, *data.tensors("test")
