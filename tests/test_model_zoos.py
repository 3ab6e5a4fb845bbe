"""Users' models from the common zoos: state dicts of torchvision and timm architectures (`arch` torchvision:<name>,
timm:<name>), and whole torch.export programs, through the same loader, checks and attacks as any other model."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from labelflip_models.attacks import Bounds, make_attack, run_attack
from labelflip_models.data import Dataset
from labelflip_models.errors import ConfigError
from labelflip_models.models.architectures import Normalized, build_net, predict
from labelflip_models.models.io import ExportedModule, load_model
from labelflip_models.runs.evaluate import load_user_model

CLASSES = 5
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture(autouse=True)
def _own_rng():
    """The tests seed torch's global generator; keep that from leaking into other tests on this worker."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Building an architecture never fetches weights (the suite also refuses sockets)."""
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    """What a user trains and saves: torchvision's ResNet-18 for their class count, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=CLASSES).eval()


@pytest.fixture(scope="module")
def rgb_data() -> Dataset:
    """A handful of 32x32 RGB images in CLASSES classes."""
    rng = np.random.default_rng(0)
    return Dataset(name="rgb", class_names=tuple(f"c{i}" for i in range(CLASSES)),
                   train_images=rng.integers(0, 256, (CLASSES, 32, 32, 3), dtype=np.uint8),
                   train_labels=np.arange(CLASSES), test_images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                   test_labels=np.arange(4) % CLASSES, source="generated")


def _images(n: int = 4, channels: int = 3, side: int = 32) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(1))


# --- torchvision ----------------------------------------------------------------------------------

def test_torchvision_state_dict_loads_bit_for_bit(tmp_path, resnet18):
    torch.save(resnet18.state_dict(), tmp_path / "resnet18.pt")
    loaded = load_model(tmp_path / "resnet18.pt", arch="torchvision:resnet18", in_channels=3, num_classes=CLASSES)
    assert isinstance(loaded, Normalized) and type(loaded.net) is type(resnet18)
    assert not any(m.training for m in loaded.modules())
    images = _images()
    with torch.no_grad():
        assert torch.equal(loaded(images), resnet18(images))
    assert torch.equal(predict(loaded, images), predict(resnet18, images))


def test_torchvision_state_dict_with_mean_std(tmp_path, resnet18):
    torch.save({"model_state_dict": resnet18.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt", arch="torchvision:resnet18", in_channels=3, num_classes=CLASSES,
                        mean=MEAN, std=STD)
    images = _images()
    normalised = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(loaded(images), resnet18(normalised))


def test_torchvision_weights_that_do_not_fit_name_the_keys(tmp_path, resnet18):
    torch.save(resnet18.state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(ConfigError, match=r"do not fit `arch` torchvision:resnet34: missing keys \(\d+\): "
                                          r"layer1\.2\.conv1\.weight, "):
        load_model(tmp_path / "resnet18.pt", arch="torchvision:resnet34", in_channels=3, num_classes=CLASSES)
    with pytest.raises(ConfigError, match=r"shape mismatches, file vs arch \(2\): fc\.weight \(5, 512\) vs "
                                          r"\(10, 512\), fc\.bias \(5,\) vs \(10,\)"):
        load_model(tmp_path / "resnet18.pt", arch="torchvision:resnet18", in_channels=3, num_classes=10)
    prefixed = {f"model.{k}": v for k, v in resnet18.state_dict().items()}
    torch.save(prefixed, tmp_path / "prefixed.pt")
    with pytest.raises(ConfigError, match=r"missing keys \(\d+\): conv1\.weight, .*; unexpected keys \(\d+\): "
                                          r"model\.conv1\.weight, "):
        load_model(tmp_path / "prefixed.pt", arch="torchvision:resnet18", in_channels=3, num_classes=CLASSES)


def test_torchvision_needs_three_channels(tmp_path, resnet18):
    torch.save(resnet18.state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(ConfigError, match=r"architecture 'torchvision:resnet18' takes 3-channel \(RGB\) images, but "
                                          r"the dataset's have 1; timm:<name> builds its models for any channel"):
        load_model(tmp_path / "resnet18.pt", arch="torchvision:resnet18", in_channels=1, num_classes=CLASSES)


@pytest.mark.parametrize("arch, match", [
    ("torchvision:resnet81", r"unknown architecture 'torchvision:resnet81': torchvision has no classifier of that "
                             r"name; close matches: torchvision:resnet18, "),
    ("torchvision:ResNet18", r"close matches: torchvision:resnet18"),
    # get_model builds it, but it is no image classifier.
    ("torchvision:fasterrcnn_resnet50_fpn", r"unknown architecture 'torchvision:fasterrcnn_resnet50_fpn'"),
    # A zoo name without its prefix, or a registry name misspelt.
    ("resnet18", r"unknown architecture 'resnet18'; choose one of: cw-mnist, cw-cifar, preact-resnet18, "
                 r"torchvision:<name> or timm:<name>; close matches: torchvision:resnet18, "),
    ("cw_mnist", r"unknown architecture 'cw_mnist'; .*close matches: cw-mnist"),
])
def test_unknown_architectures_list_close_matches(arch, match):
    with pytest.raises(ConfigError, match=match):
        build_net(arch, 3, CLASSES)


def test_state_dict_without_arch_names_the_zoos(tmp_path, resnet18):
    torch.save(resnet18.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"pass `arch`.*\(one of: cw-mnist, cw-cifar, preact-resnet18, "
                                          r"torchvision:<name> or timm:<name>\)"):
        load_model(tmp_path / "w.pt", in_channels=3, num_classes=CLASSES)


# --- timm ---------------------------------------------------------------------------------------

def test_timm_state_dict_loads_bit_for_bit_with_its_channel_count(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install \"labelflip[timm]\"")
    torch.manual_seed(2)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", arch="timm:test_resnet", in_channels=1, num_classes=10)
    images = _images(channels=1, side=28)
    with torch.no_grad():
        assert torch.equal(loaded(images), net(images))
    # The same weights cannot be read as a 3-channel model: the stem's shape names the mismatch.
    with pytest.raises(ConfigError, match=r"shape mismatches, file vs arch \(1\): conv1\.0\.weight \(16, 1, 3, 3\) "
                                          r"vs \(16, 3, 3, 3\)"):
        load_model(tmp_path / "w.pt", arch="timm:test_resnet", in_channels=3, num_classes=10)


@pytest.mark.parametrize("arch, match", [
    ("timm:resnet81", r"unknown architecture 'timm:resnet81': timm has no model of that name; close matches: "
                      r"timm:resnet18"),
    # hf-hub: would fetch a config (and weights) from the Hugging Face Hub.
    ("timm:hf-hub:timm/resnet18.a1_in1k", r"unknown architecture 'timm:hf-hub:timm/resnet18\.a1_in1k'"),
])
def test_unknown_timm_names(arch, match):
    pytest.importorskip("timm", reason="timm is an optional extra: pip install \"labelflip[timm]\"")
    with pytest.raises(ConfigError, match=match):
        build_net(arch, 3, CLASSES)


def test_timm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    with pytest.raises(ConfigError, match=r"architecture 'timm:resnet18' needs timm, which is not installed: "
                                          r"pip install \"labelflip\[timm\]\""):
        build_net("timm:resnet18", 3, CLASSES)


# --- every zoo format through a real attack ---------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_files(resnet18, tmp_path_factory):
    """The same ResNet-18 as a torchvision state dict and as a torch.export program (dynamic batch)."""
    root = tmp_path_factory.mktemp("zoo")
    torch.save(resnet18.state_dict(), root / "resnet18.pt")
    batch = torch.export.Dim.DYNAMIC
    program = torch.export.export(resnet18, (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(root / "resnet18.pt2"))
    return {"state-dict": (root / "resnet18.pt", "torchvision:resnet18"), "pt2": (root / "resnet18.pt2", None)}


def test_zoo_models_with_mean_std_through_a_real_attack(zoo_files, resnet18, rgb_data):
    """Both files load through the CLI's and the gate's loader with mean/std, compute the original's gradients, and
    an L∞ PGD attack on them gives the same adversarials."""
    images, labels = rgb_data.tensors("test")
    normalised = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    x = images.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(resnet18((x - torch.tensor(MEAN).view(1, 3, 1, 1))
                                                / torch.tensor(STD).view(1, 3, 1, 1)), labels)
    (expected_grad,) = torch.autograd.grad(loss, x)
    attacked = {}
    for fmt, (path, arch) in zoo_files.items():
        model = load_user_model(path, rgb_data, Bounds(0.0, 1.0), arch=arch, mean=MEAN, std=STD, trust_pickle=False)
        assert isinstance(model, Normalized)
        assert isinstance(model.net, ExportedModule if fmt == "pt2" else type(resnet18))
        with torch.no_grad():
            assert torch.equal(model(images), resnet18(normalised)), fmt
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), labels), x)
        torch.testing.assert_close(grad, expected_grad)
        result = run_attack(model, images, labels, make_attack("linf-pgd", steps=3), 8 / 255, bounds=Bounds(0.0, 1.0))
        assert float((result.clipped - images).abs().max()) <= 8 / 255 * (1 + 1e-5)
        assert float((result.clipped - images).abs().max()) > 0  # the gradient moved the images
        attacked[fmt] = result
    assert torch.equal(attacked["pt2"].clipped, attacked["state-dict"].clipped)
    assert torch.equal(attacked["pt2"].adv_pred, attacked["state-dict"].adv_pred)
