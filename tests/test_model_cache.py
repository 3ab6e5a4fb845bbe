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
