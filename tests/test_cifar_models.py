"""The CIFAR-10 networks, their recipes, the on-device augmentation and `labelflip throughput`."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelflip_models.bench.throughput import measure, step_flops
from labelflip_models.data import Dataset
from labelflip_models.errors import ConfigError
from labelflip_models.models.architectures import PAPER_MEAN, PAPER_STD, build_model
from labelflip_models.models.cache import load_or_train
from labelflip_models.models.train import CIFAR_MEAN, CIFAR_STD, Recipe, augment, default_arch, recipe_for

from .helpers import TINY_RECIPE, run_cli, tiny_dataset

# (parameters, forward FLOPs per 32x32 image as FlopCounterMode counts them: 2 per multiply-add). PreAct
# ResNet-18 is kuangliu's 11,171,146 plus the final BN's 1,024: 0.555 GMAC.
SIZES = {"cw-cifar": (1_147_978, 113_412_608), "preact-resnet18": (11_172_170, 1_110_845_440)}


def cifar_like(n_train: int = 64, n_test: int = 20, seed: int = 0) -> Dataset:
    """Random 32x32 RGB images named cifar-10, so that the CIFAR-10 recipes apply."""
    rng = np.random.default_rng(seed)
    return Dataset(
        name="cifar-10", class_names=tuple(f"c{c}" for c in range(10)),
        train_images=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        train_labels=np.arange(n_train) % 10,
        test_images=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        test_labels=np.arange(n_test) % 10,
        source="generated",
    )


@pytest.mark.parametrize("arch", SIZES)
def test_parameters_and_forward_flops(arch):
    model = build_model(arch, 3, 10).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
    assert model(x).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == SIZES[arch][0]
    assert step_flops(model, x, y, None) == SIZES[arch][1]
    # A training step is about three forward passes, an attack step (gradient to the input only) about two.
    assert 2.8 < step_flops(model, x, y, "weights") / SIZES[arch][1] < 3.1
    assert 1.9 < step_flops(model, x, y, "input") / SIZES[arch][1] < 2.1


def test_cw_cifar_is_the_papers_layout():
    convs = [m for m in build_model("cw-cifar", 3, 10).modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in build_model("cw-cifar", 3, 10).modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    # 32 -> 28 -> pool 14 -> 10 -> pool 5
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(128 * 5 * 5, 256), (256, 256), (256, 10)]


def test_recipes_by_dataset_arch_and_device():
    assert recipe_for("mnist-5k") is recipe_for("mnist-5k", "cw-mnist", "cuda:1")  # one recipe for every device
    gpu = recipe_for("cifar-10", "preact-resnet18", "cuda:1")
    assert (gpu.optimizer, gpu.mean, gpu.std, gpu.augment) == ("sgd-nesterov", CIFAR_MEAN, CIFAR_STD, True)
    assert 512 <= gpu.batch_size <= 1024 and gpu.label_smoothing == 0.2
    assert recipe_for("cifar-10", "cw-cifar", "cpu").mean == PAPER_MEAN
    assert recipe_for("cifar-10", "cw-cifar", "cpu") != recipe_for("cifar-10", "cw-cifar", "cuda")
    assert (default_arch("cifar-10"), default_arch("mnist"), default_arch("tiny")) == ("cw-cifar", "cw-mnist",
                                                                                        "cw-mnist")


@pytest.mark.parametrize("args, message", [
    (("cifar-10", "cw-mnist", "cpu"), r"no training recipe for cw-mnist on 'cifar-10' \(cpu\); known: cw-cifar on"),
    (("mnist", "preact-resnet18", "cuda"), r"known: cw-mnist on \*"),
    (("cifar-10", "cw-cifar", "mps"), "known: cw-cifar on cpu"),
])
def test_missing_recipe_is_one_clear_line(args, message):
    with pytest.raises(ConfigError, match=message) as info:
        recipe_for(*args)
    assert "\n" not in str(info.value)


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'; choose one of: adam, sgd-nesterov"):
        Recipe("x", epochs=1, batch_size=8, lr=1e-3, optimizer="rmsprop")


def test_augment_flips_and_crops_each_image_from_its_reflect_padded_self():
    x = torch.rand(16, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    seen_flip = set()
    for image, result in zip(x, out):
        matches = [(flip, dy, dx) for flip in (False, True) for dy in range(9) for dx in range(9)
                   if torch.equal(result, F.pad((image.flip(2) if flip else image)[None], (4,) * 4,
                                                mode="reflect")[0, :, dy:dy + 32, dx:dx + 32])]
        assert matches, "an augmented image is no flip-and-crop of its input"
        seen_flip.add(matches[0][0])
    assert seen_flip == {False, True}


@pytest.mark.parametrize("arch", SIZES)
def test_cifar_training_is_deterministic_and_records_its_normalisation(tmp_path, arch):
    data = cifar_like()
    first = load_or_train(data, arch, root=tmp_path / "a")
    second = load_or_train(data, arch, root=tmp_path / "b")
    assert first.trained_now and second.trained_now and first.sha256 == second.sha256
    recipe = recipe_for("cifar-10", arch, "cpu")
    assert first.sidecar["recipe"]["name"] == recipe.name and first.sidecar["arch"] == arch
    assert first.sidecar["mean"] == list(recipe.mean) and first.sidecar["std"] == list(recipe.std)
    assert first.model.mean.flatten().tolist() == pytest.approx(recipe.mean)
    expected = (CIFAR_MEAN, CIFAR_STD) if arch == "preact-resnet18" else (PAPER_MEAN, PAPER_STD)
    assert (recipe.mean, recipe.std) == expected


def test_augmentation_is_part_of_training(tmp_path):
    data = cifar_like()
    recipe = recipe_for("cifar-10", "cw-cifar", "cpu")
    with_aug = load_or_train(data, "cw-cifar", recipe=recipe, root=tmp_path)
    without = load_or_train(data, "cw-cifar", recipe=replace(recipe, augment=False), root=tmp_path)
    assert with_aug.weights_path != without.weights_path and with_aug.sha256 != without.sha256


def test_a_one_step_warm_up_trains(tmp_path):
    # 64 images in batches of 32 for 2 epochs: 4 steps, a quarter of them warm-up (torch's OneCycleLR alone
    # divides by zero there).
    trained = load_or_train(tiny_dataset(), recipe=replace(TINY_RECIPE, epochs=2), root=tmp_path)
    assert trained.trained_now and all(torch.isfinite(p).all() for p in trained.model.parameters())


def test_throughput_on_cpu():
    result = measure("cw-cifar", "cpu", batch_size=16, seconds=0.05)
    assert (result.arch, result.device, result.batch_size, result.parameters) == ("cw-cifar", "cpu", 16,
                                                                                   SIZES["cw-cifar"][0])
    assert result.forward_gflop == SIZES["cw-cifar"][1] / 1e9
    train, attack = result.rates
    assert (train.step, attack.step) == ("train", "linf-pgd")
    for rate in result.rates:
        assert rate.image_steps_per_s > 0 and rate.gflop_per_s > 0 and rate.peak_fraction is None
        assert rate.precision in ("bf16", "fp32")
    assert train.gflop_per_image_step > attack.gflop_per_image_step > result.forward_gflop


def test_throughput_command(capsys):
    rc, out, err = run_cli(capsys, ["throughput", "--arch", "cw-cifar", "--device", "cpu", "--batch-size", "8",
                                    "--seconds", "0.05"])
    assert rc == 0, err
    header, columns, train, attack = out.splitlines()
    assert header.startswith("cw-cifar on cpu (") and "1.15 M parameters" in header
    assert columns.split()[:4] == ["step", "precision", "image-steps/s", "GFLOP/image"]
    assert train.split()[0] == "train" and attack.split()[0] == "linf-pgd"


@pytest.mark.parametrize("argv, message", [
    (["--seconds", "0"], "labelflip: error: seconds must be positive, got 0.0"),
    (["--batch-size", "0"], "labelflip: error: batch size must be a whole number >= 1, got 0"),
])
def test_throughput_bad_input_is_one_clear_line(capsys, argv, message):
    rc, out, err = run_cli(capsys, ["throughput", "--arch", "cw-cifar", "--device", "cpu", *argv])
    assert rc == 2 and err.strip() == message and out == ""


def test_throughput_needs_a_cifar_architecture(capsys):
    rc, _, err = run_cli(capsys, ["throughput", "--arch", "cw-mnist"])
    assert rc == 2 and "invalid choice: 'cw-mnist'" in err and "preact-resnet18" in err
