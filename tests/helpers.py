"""Small real-format data shared by the unit tests (no downloads, no large files)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labelflip_models.data import Dataset
from labelflip_models.gate.config import REFERENCE_BASELINES
from labelflip_models.gate.scaffold import TEST_FILE
from labelflip_models.models.train import Recipe

TINY_RECIPE = Recipe("tiny", epochs=1, batch_size=32, lr=1e-3)
# Relative to each weight tensor's own spread. Measured on MNIST-5k: clean accuracy 0.984 -> 0.977 (the
# regression an accuracy check misses), LinfPGD ε=0.1 flip fraction 0.118 -> 0.252.
WEIGHT_NOISE = 0.5


def weakened(model: nn.Module, noise: float, seed: int = 0) -> nn.Module:
    """A copy of `model` with Gaussian noise in every weight tensor, `noise` times the tensor's own spread. The
    noise is drawn on the CPU and moved to each weight's device: the same weakened model on every device."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=generator, device="cpu").to(p.device) * noise * p.std())
    return noisy


def reference_net(dataset: str, scale: float = 1.0, mean: float = 0.0, std: float = 1.0) -> nn.Module:
    """The bare C&W net of `dataset`'s shipped reference model, for a user who feeds it (x - mean) / std with pixels
    x in [0, scale]: the reference's own normalisation is folded into the first convolution, which has no padding,
    so the result classifies as well as the reference does (a trained stand-in for a user's model)."""
    from labelflip_models.data import load_dataset
    from labelflip_models.models.cache import load_or_train

    reference = load_or_train(load_dataset(dataset)).model
    net = copy.deepcopy(reference.net).eval()
    # The reference sees (x / scale - m) / s = a * z + c for the user's z = (x - mean) / std.
    m, s = float(reference.mean.flatten()[0]), float(reference.std.flatten()[0])
    a, c = std / (scale * s), (mean / scale - m) / s
    first = net[0]
    with torch.no_grad():
        first.bias.add_(c * first.weight.sum(dim=(1, 2, 3)))
        first.weight.mul_(a)
    return net


def tiny_dataset(n_train: int = 64, n_test: int = 40, seed: int = 0) -> Dataset:
    """Random 28x28 digits-shaped data: enough to exercise training, caching and attacks in seconds."""
    rng = np.random.default_rng(seed)
    return Dataset(
        name="tiny", class_names=tuple(str(c) for c in range(10)),
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=np.arange(n_train) % 10,
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=np.arange(n_test) % 10,
        source="generated",
    )


def run_cli(capsys, argv):
    """(exit status, stdout, stderr) of `labelflip ARGV`, run in this process."""
    from labelflip_models.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


# The shipped gate tests as a repository collects them (labelflip init), and the test_gate.py part alone.
GATE_FILE = TEST_FILE
GATE_ONLY = "from labelflip_models.gate.tests.test_gate import *  # noqa: F401,F403\n"


def copied_baselines(destination: Path, profile: str = "quick") -> Path:
    """A copy of a profile's reference baselines: a failing gate writes "obtained" files beside the baselines it
    reads, which must not land in the source tree."""
    shutil.copytree(REFERENCE_BASELINES / profile, destination / profile)
    return destination
