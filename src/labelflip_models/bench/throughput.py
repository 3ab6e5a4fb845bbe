"""How fast an architecture trains and is attacked on this device (`labelflip throughput`).

Synthetic CIFAR-10-shaped data (random 8-bit pixels in [0, 1], random labels) run through the code the real work
runs: the CIFAR-10 recipe's training step (its optimizer and augmentation, bf16 autocast where native,
channels_last, its CPU thread count) and the native L∞-PGD kernel on the model copy and in the precision that
engine `auto` picks. FLOPs come from torch's FlopCounterMode, so GFLOP/s is work done, not work assumed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..attacks import Bounds, make_attack
from ..attacks.engine import choose_engine, fast_copy
from ..attacks.kernels import pgd
from ..attacks.seeds import random_start
from ..devices import device_class, ieee_fp32, synchronize
from ..errors import ConfigError
from ..models.architectures import build_model
from ..models.train import RECIPES, Recipe, augment, cpu_threads, make_optimizer, recipe_for, train_step

DATASET, SHAPE, NUM_CLASSES = "cifar-10", (3, 32, 32), 10
ARCHS = tuple(dict.fromkeys(arch for name, arch, _ in RECIPES if name == DATASET))
PGD_EPSILON = 8 / 255
# Dense bf16 tensor-core peaks (TFLOP/s, NVIDIA datasheets) by device-name fragment; the first match counts.
# NVL parts run at a lower clock than the SXM ones whose names they contain, so they come first.
BF16_PEAK_TFLOPS = {"H100 NVL": 835.5, "H200 NVL": 835.5, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0}


@dataclass(frozen=True)
class Rate:
    step: str
    precision: str
    image_steps_per_s: float
    gflop_per_image_step: float
    peak_fraction: float | None  # of the device's dense bf16 peak, where known

    @property
    def gflop_per_s(self) -> float:
        return self.image_steps_per_s * self.gflop_per_image_step


@dataclass(frozen=True)
class Throughput:
    arch: str
    device: str
    device_class: str
    batch_size: int
    parameters: int
    forward_gflop: float  # per image
    rates: tuple[Rate, ...]

    def table(self) -> str:
        lines = [f"{self.arch} on {self.device} ({self.device_class}), batch {self.batch_size}: "
                 f"{self.parameters / 1e6:.2f} M parameters, {self.forward_gflop:.4g} GFLOP forward per image",
                 f"{'step':<10} {'precision':<9} {'image-steps/s':>13} {'GFLOP/image':>11} {'GFLOP/s':>9} "
                 f"{'of bf16 peak':>12}"]
        for r in self.rates:
            peak = "-" if r.peak_fraction is None else f"{r.peak_fraction:.1%}"
            lines.append(f"{r.step:<10} {r.precision:<9} {r.image_steps_per_s:>13.1f} "
                         f"{r.gflop_per_image_step:>11.4g} {r.gflop_per_s:>9.1f} {peak:>12}")
        return "\n".join(lines) + "\n"


def measure(arch: str, device: str = "cpu", batch_size: int | None = None, seconds: float = 3.0) -> Throughput:
    """Training and L∞-PGD throughput of `arch` with its CIFAR-10 recipe for `device`, each timed for about
    `seconds` after a warm-up."""
    recipe = recipe_for(DATASET, arch, device)
    batch = recipe.batch_size if batch_size is None else batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch size must be a whole number >= 1, got {batch!r}")
    if not seconds > 0:
        raise ConfigError(f"seconds must be positive, got {seconds!r}")
    dev = torch.device(device)
    data = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch, *SHAPE), generator=data, device="cpu")
    x = (pixels / 255).to(dev, memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=data, device="cpu").to(dev)
    torch.manual_seed(0)
    model = build_model(arch, SHAPE[0], NUM_CLASSES, recipe.mean, recipe.std).to(dev)
    with ieee_fp32():  # fp32 steps measured as fp32, not CUDA's TF32
        return Throughput(arch, str(dev), device_class(dev), batch, sum(p.numel() for p in model.parameters()),
                          step_flops(model, x[:2], y[:2], None) / 1e9,
                          (_train_rate(model, x, y, recipe, seconds), _pgd_rate(model, x, y, seconds)))


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grad: str | None) -> float:
    """FLOPs per image of a forward pass and its backward to the weights (grad="weights": a training step), to
    the input ("input": an attack step) or none (None), counted on a copy of the model."""
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(grad == "weights")
    x = x.clone().requires_grad_(grad == "input")
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y)
        if grad is not None:
            loss.backward()
    return counter.get_total_flops() / len(x)


def _train_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, seconds: float) -> Rate:
    model = copy.deepcopy(model).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model, recipe)
    bf16 = recipe.uses_bf16(x.device)
    crops = torch.Generator(x.device).manual_seed(0)

    def run(steps: int) -> None:
        for _ in range(steps):
            train_step(model, opt, augment(x, crops) if recipe.augment else x, y, recipe, bf16)

    with cpu_threads(recipe, x.device):
        per_s = _per_second(run, seconds, x.device) * len(x)
    return _rate("train", bf16, per_s, step_flops(model, x[:2], y[:2], "weights"), x.device)


def _pgd_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float) -> Rate:
    model.eval()
    engine = choose_engine("auto", True, model, x.device)
    fast, attack = fast_copy(model), make_attack("linf-pgd")
    start = random_start(x, torch.arange(len(x), device="cpu"), 0, PGD_EPSILON, "linf")

    def run(steps: int) -> None:
        pgd(fast, x, y, PGD_EPSILON, "linf", steps, attack.rel_stepsize, start, Bounds(), engine.bf16)

    per_s = _per_second(run, seconds, x.device) * len(x)
    return _rate("linf-pgd", engine.bf16, per_s, step_flops(model, x[:2], y[:2], "input"), x.device)


def _per_second(run: Callable[[int], None], seconds: float, device: torch.device, rounds: int = 3) -> float:
    """Units of run(n) per second in the fastest of `rounds` runs sharing `seconds`, after a warm-up run(1)
    (kernel choice, allocator, the optimizer's state) and a run(1) that sizes n. The fastest, because on a
    shared machine noise only ever slows a run down."""
    _timed(run, 1, device)
    n = max(1, round(seconds / rounds / _timed(run, 1, device)))
    return n / min(_timed(run, n, device) for _ in range(rounds))


def _timed(run: Callable[[int], None], n: int, device: torch.device) -> float:
    """Seconds of run(n), from an idle device to its last kernel."""
    synchronize(device)
    start = time.perf_counter()
    run(n)
    synchronize(device)
    return time.perf_counter() - start


def _rate(step: str, bf16: bool, per_s: float, flops: float, device: torch.device) -> Rate:
    peak = _bf16_peak_flops(device) if bf16 else None
    gflop = flops / 1e9
    return Rate(step, "bf16" if bf16 else "fp32", per_s, gflop, None if peak is None else per_s * flops / peak)


def _bf16_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for fragment, tflops in BF16_PEAK_TFLOPS.items() if fragment in name), None)
