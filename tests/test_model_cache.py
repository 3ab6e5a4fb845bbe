import json
from dataclasses import replace

import pytest
import torch

from labelflip_models.models.cache import CacheWarning, cache_key, load_or_train, model_sha256
from labelflip_models.models.train import CIFAR_MEAN, CIFAR_STD, recipe_for

from .helpers import TINY_RECIPE, tiny_dataset


def _train(root, **kw):
    return load_or_train(tiny_dataset(), recipe=TINY_RECIPE, root=root, **kw)


def test_second_call_loads_the_same_weights(tmp_path):
    first = _train(tmp_path)
    second = _train(tmp_path)
    assert first.trained_now and not second.trained_now
    assert second.sha256 == first.sha256 == model_sha256(second.model)
    sidecar = json.loads(first.weights_path.with_suffix(".json").read_text())
    assert sidecar["recipe"]["name"] == "tiny" and sidecar["seed"] == 0
    assert set(sidecar["versions"]) >= {"torch", "foolbox", "numpy", "labelflip"}
    assert not second.model.training


def test_training_is_deterministic_on_cpu(tmp_path):
    assert _train(tmp_path / "a").sha256 == _train(tmp_path / "b").sha256
    assert _train(tmp_path / "c", seed=1).sha256 != _train(tmp_path / "a").sha256


def test_key_depends_on_recipe_seed_and_data():
    fp = tiny_dataset().fingerprint
    key = cache_key("cw-mnist", TINY_RECIPE, 0, fp, "fp32")
    assert key != cache_key("cw-mnist", TINY_RECIPE, 1, fp, "fp32")
    assert key != cache_key("cw-mnist", TINY_RECIPE, 0, tiny_dataset(seed=1).fingerprint, "fp32")
    assert key != cache_key("cw-mnist", TINY_RECIPE, 0, fp, "bf16")
    # GPU-trained weights differ from CPU-trained ones: never the same entry.
    assert key == cache_key("cw-mnist", TINY_RECIPE, 0, fp, "fp32", "cpu")
    assert key != cache_key("cw-mnist", TINY_RECIPE, 0, fp, "fp32", "cuda")


# Keys issued before recipes held mean, std, augment and optimizer. Cached models, and the baselines that record
# their sha256, are found by these keys, so they must not move (fingerprint "f"*64 stands in for the data's).
PINNED_KEYS = {("mnist-5k", "bf16"): "0a4961dae516e3bb7822", ("mnist-5k", "fp32"): "391d2cf58af3363d80cc",
               ("mnist", "bf16"): "7f53e52645aa59ecfb88", ("fashion-mnist", "bf16"): "7f53e52645aa59ecfb88",
               ("fashion-mnist", "fp32"): "836a9c1cc841c949928d"}


@pytest.mark.parametrize("dataset, precision", PINNED_KEYS)
def test_keys_of_the_existing_recipes_are_unchanged(dataset, precision):
    assert cache_key("cw-mnist", recipe_for(dataset), 0, "f" * 64, precision) == PINNED_KEYS[dataset, precision]
    assert cache_key("cw-mnist", TINY_RECIPE, 0, "f" * 64, "fp32") == "9f27cad24d3f402bffbc"


@pytest.mark.parametrize("change", [dict(mean=CIFAR_MEAN, std=CIFAR_STD), dict(augment=True),
                                    dict(optimizer="sgd-nesterov")])
def test_key_depends_on_normalisation_augmentation_and_optimizer(change):
    fp = tiny_dataset().fingerprint
    assert cache_key("cw-mnist", replace(TINY_RECIPE, **change), 0, fp, "fp32") != cache_key(
        "cw-mnist", TINY_RECIPE, 0, fp, "fp32")


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "foreign_sidecar", "bad_json", "no_weights"])
def test_damaged_entry_is_retrained_never_loaded(tmp_path, damage):
    good = _train(tmp_path)
    weights, sidecar = good.weights_path, good.weights_path.with_suffix(".json")
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "foreign_sidecar":
        meta = json.loads(sidecar.read_text())
        meta["key"] = "0" * 20
        sidecar.write_text(json.dumps(meta))
    elif damage == "no_weights":
        weights.unlink()
    else:
        sidecar.write_text("{not json")
    with pytest.warns(CacheWarning, match="unusable"):
        again = _train(tmp_path)
    assert again.trained_now and again.sha256 == good.sha256
    assert _train(tmp_path).trained_now is False  # the rebuilt entry is valid


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from labelflip_models.errors import LabelflipError

    with pytest.raises(LabelflipError, match="LABELFLIP_CACHE_DIR"):
        _train(blocker)


def test_model_on_requested_device(tmp_path):
    trained = _train(tmp_path, device="cpu")
    assert next(trained.model.parameters()).device == torch.device("cpu")


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A tiny model 'shipped' as labelflip ships its reference weights: (trained model, where it was shipped)."""
    trained = _train(tmp_path / "cache")
    ship = tmp_path / "ship" / "tiny"
    ship.mkdir(parents=True)
    (ship / "cw-mnist.safetensors").write_bytes(trained.weights_path.read_bytes())
    (ship / "cw-mnist.json").write_bytes(trained.weights_path.with_suffix(".json").read_bytes())
    monkeypatch.setattr("labelflip_models.models.cache.SHIPPED_DIR", tmp_path / "ship")
    return trained, ship


def test_shipped_weights_are_loaded_without_training_or_cache(shipped, tmp_path):
    trained, ship = shipped
    loaded = load_or_train(tiny_dataset(), root=tmp_path / "empty")
    assert not loaded.trained_now and loaded.weights_path == ship / "cw-mnist.safetensors"
    assert model_sha256(loaded.model) == trained.sha256 and not loaded.model.training
    assert not (tmp_path / "empty").exists()


def test_shipped_weights_stand_only_for_their_seed_and_data(shipped):
    from labelflip_models.models.cache import _shipped

    assert _shipped(tiny_dataset(), "cw-mnist", 0, "cpu") is not None
    assert _shipped(tiny_dataset(), "cw-mnist", 1, "cpu") is None
    assert _shipped(tiny_dataset(seed=1), "cw-mnist", 0, "cpu") is None  # other files: another fingerprint
    assert _shipped(tiny_dataset(), "preact-resnet18", 0, "cpu") is None


def test_damaged_shipped_weights_are_an_error_not_a_silent_retrain(shipped, tmp_path):
    from labelflip_models.errors import StorageError

    _, ship = shipped
    data = bytearray((ship / "cw-mnist.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (ship / "cw-mnist.safetensors").write_bytes(bytes(data))
    with pytest.raises(StorageError, match="do not match the sha256 in cw-mnist.json; reinstall labelflip"):
        load_or_train(tiny_dataset(), root=tmp_path / "empty")


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_reference_baselines_were_made_with_the_shipped_weights(profile):
    # The gate's reference baselines and the weights every machine loads must be one model.
    from labelflip_models.gate.config import REFERENCE_BASELINES
    from labelflip_models.models.cache import shipped_paths

    files = sorted((REFERENCE_BASELINES / profile).glob("*/*.json"))
    assert files
    for path in files:
        result = json.loads(path.read_text())["result"]
        sidecar = json.loads(shipped_paths(result["dataset"]["name"], result["model"]["arch"])[1].read_text())
        assert result["model"]["sha256"] == sidecar["sha256"], path
