import pytest

from labelflip_models.storage.cache_dir import CACHE_DIR_ENV, cache_root

# Read before pytester points HOME at a temp folder, which would move the default model cache there (and retrain).
USER_CACHE = cache_root()


@pytest.fixture
def pytester_gate(pytester, monkeypatch):
    """pytester for runs of the gate in a child pytest, which gets this process's share of the cores (under
    xdist each worker has fewer threads than cores, and a child using all of them oversubscribes), the user's model
    cache, and no network."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    # The child's rootdir is a temp dir without our pyproject.toml, whose addopts block sockets.
    monkeypatch.setenv("PYTEST_ADDOPTS", "--disable-socket")
    monkeypatch.setenv(CACHE_DIR_ENV, str(USER_CACHE))
    return pytester


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, test images, test labels): a model trained for seconds on random digit-shaped data."""
    from labelflip_models.models.cache import load_or_train

    from .helpers import TINY_RECIPE, tiny_dataset

    data = tiny_dataset()
    model = load_or_train(data, recipe=TINY_RECIPE, root=tmp_path_factory.mktemp("cache")).model
    return model, *data.tensors("test")
