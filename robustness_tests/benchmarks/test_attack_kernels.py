"""Kernel benchmarks: every attack as labelflip runs it, the same attack through torchattacks where it has one,
and one slice of a training epoch, each timed side by side with a plain eager fp32 PyTorch loop doing the same
work on the same batch (`reference_loops`). Each entry records in `extra_info`: images/s, `ratio_to_reference`
(best time / the reference's best time, both measured round by round in this run; < 1 is faster), achieved
GFLOP/s (FLOPs counted by torch's FlopCounterMode on one untimed run), the engine and the device class.

Run without xdist:  pytest robustness_tests/benchmarks -p no:xdist --benchmark-json=bench.json
Then:  labelflip bench-table bench.json;  labelflip bench-compare bench.json --baseline fixtures/benchmarks/...
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from typing import Any

import pytest
import torch

import reference_loops as ref  # robustness_tests/benchmarks is on sys.path (pytest rootdir-relative import)
from labelflip_models.attacks import ATTACKS, NORMS, make_attack, run_attack
from labelflip_models.attacks.autoattack import MAX_TARGETS
from labelflip_models.attacks.engine import choose_engine, fast_copy
from labelflip_models.attacks.run import autoattack_adversarials, fixed_adversarials
from labelflip_models.bench.throughput import step_flops
from labelflip_models.devices import device_class, ieee_fp32, synchronize
from labelflip_models.models.architectures import predict
from labelflip_models.models.train import recipe_for, train_step

ROUNDS = 3  # timed rounds per entry, each preceded by one round of the reference; plus one warm-up round


@dataclass(frozen=True)
class Kernel:
    attack: str
    params: dict[str, Any]
    epsilon: float | None
    batch: int
    reference: Callable[..., Any]  # (model, x, y) -> adversarials, the plain loop
    torchattacks: Callable[[Any], Any] | None = None  # (model) -> a torchattacks attack doing the same
    steps: int = 1  # gradient steps per image, for image-steps/s
    # Whether each step is one forward and one input-gradient pass, so GFLOP/s follows from image-steps/s;
    # DeepFool's steps take one backward pass per candidate class and stop when every image is adversarial.
    flops_per_step: bool = True
    pyautoattack: Callable[[Any], Any] | None = None  # (model) -> (x, y) -> adversarials, the official AutoAttack code


def _pgd(norm, eps, steps, rel, start):
    return lambda m, x, y: ref.pgd(m, x, y, eps, norm, steps, rel, start)


def _ta(name, **kw):
    def make(model):
        import torchattacks

        return getattr(torchattacks, name)(model, **kw)
    return make


CW = dict(binary_search_steps=1, steps=20, initial_const=1.0, abort_early=False)
KERNELS = {
    "fgsm": Kernel("fgsm", {}, 0.05, 256, _pgd("linf", 0.05, 1, 1.0, False), _ta("FGSM", eps=0.05)),
    "linf-pgd": Kernel("linf-pgd", {}, 0.05, 256, _pgd("linf", 0.05, 40, 0.01 / 0.3, True),
                       _ta("PGD", eps=0.05, alpha=0.05 * 0.01 / 0.3, steps=40, random_start=True), steps=40),
    "l2-pgd": Kernel("l2-pgd", {}, 1.0, 256, _pgd("l2", 1.0, 50, 0.025, True),
                     _ta("PGDL2", eps=1.0, alpha=0.025, steps=50, random_start=True), steps=50),
    # Fixed work: one binary-search step, no early abort, so every implementation takes exactly `steps` steps.
    "l2-cw": Kernel("l2-cw", CW, None, 256, lambda m, x, y: ref.carlini_wagner(m, x, y, CW["steps"], 1.0),
                    _ta("CW", c=1.0, kappa=0, steps=CW["steps"], lr=0.01), steps=CW["steps"]),
    "l2-deepfool": Kernel("l2-deepfool", {}, None, 32, lambda m, x, y: ref.deepfool(m, x, y, "l2"),
                          _ta("DeepFool", steps=50, overshoot=0.02), flops_per_step=False),
    "linf-deepfool": Kernel("linf-deepfool", {}, None, 32, lambda m, x, y: ref.deepfool(m, x, y, "linf"),
                            flops_per_step=False),
}
TRAIN_SLICE = 2048  # images of one training-epoch slice (8 steps of the Fashion-MNIST recipe's batch)


def _official(component, eps, n_iter):
    """pyautoattack's APGD-CE or APGD-T as `AutoAttack(version="standard")` configures it (one restart, 9 target
    classes), with `n_iter` steps, called as its `run_standard_evaluation` calls it."""
    def make(model):
        from pyautoattack import AutoAttack

        aa = AutoAttack(model, norm="Linf", eps=eps, seed=0, version="standard", device=next(model.parameters()).device)
        attack = aa.apgd if component == "apgd-ce" else aa.apgd_targeted
        attack.n_iter = attack.n_iter_orig = n_iter
        # The constructor derived the step-size checkpoints from its n_iter of 100.
        attack.n_iter_2, attack.n_iter_min, attack.size_decr = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))

        def run(x, y):
            with torch.no_grad():  # each attack enables gradients where it needs them
                return attack.perturb(x, y)
        return run
    return make


# APGD-CE and APGD-T (L∞, ε = 0.1) as AutoAttack's standard version runs them, on one batch, with a quarter of its
# 100 steps so a round takes seconds. Only the images classified correctly are attacked, and APGD-T's later target
# classes only those still robust, so the work per image is not fixed: no GFLOP/s.
APGD_STEPS, APGD_EPS = 25, 0.1
APGD_KERNELS = {
    "linf-apgd-ce": Kernel("linf-apgd-ce", {"n_iter": APGD_STEPS}, APGD_EPS, 64,
                           lambda m, x, y: ref.apgd(m, x, y, APGD_EPS, "linf", APGD_STEPS),
                           _ta("APGD", norm="Linf", eps=APGD_EPS, steps=APGD_STEPS, n_restarts=1, loss="ce", rho=0.75),
                           steps=APGD_STEPS, flops_per_step=False,
                           pyautoattack=_official("apgd-ce", APGD_EPS, APGD_STEPS)),
    "linf-apgd-t": Kernel("linf-apgd-t", {"n_iter": APGD_STEPS}, APGD_EPS, 64,
                          lambda m, x, y: ref.apgd(m, x, y, APGD_EPS, "linf", APGD_STEPS, targets=MAX_TARGETS),
                          _ta("APGDT", norm="Linf", eps=APGD_EPS, steps=APGD_STEPS, n_restarts=1, rho=0.75,
                              n_classes=MAX_TARGETS + 1),
                          steps=APGD_STEPS, flops_per_step=False,
                          pyautoattack=_official("apgd-t", APGD_EPS, APGD_STEPS)),
}


@pytest.fixture(scope="module")
def setup(labelflip_dataset, labelflip_reference_model):
    data = labelflip_dataset("fashion-mnist")
    return data, labelflip_reference_model(data)


def side_by_side(benchmark, fn: Callable[[], Any], reference: Callable[[], Any],
                 device: torch.device) -> tuple[Any, float]:
    """Time `fn` with pytest-benchmark, running `reference` (untimed by it, timed here) before every round, so
    both see the same machine state; returns fn's last result and the reference's best time. Each timed call
    ends with the device's last kernel: on a GPU, work still queued would otherwise spill into the next timing."""
    ref_times: list[float] = []

    def before() -> None:
        torch.manual_seed(0)
        synchronize(device)
        start = time.perf_counter()
        reference()
        synchronize(device)
        ref_times.append(time.perf_counter() - start)
        torch.manual_seed(0)

    def timed() -> Any:
        result = fn()
        synchronize(device)
        return result

    with ieee_fp32():  # the fp32 loops in fp32 on a GPU too, not CUDA's TF32 (run_attack does the same)
        result = benchmark.pedantic(timed, setup=before, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    return result, min(ref_times)


def _record(benchmark, kernel: str, impl: str, engine: str, device: torch.device, batch: int, steps: int,
            reference_s: float, flops: float | bool) -> None:
    """`flops`: per image and step, or False where the work per step is not fixed."""
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(
        kernel=kernel, impl=impl, engine=engine, device=str(device), device_class=device_class(device), batch=batch,
        steps=steps, images_per_s=batch / best, image_steps_per_s=batch * steps / best,
        reference_images_per_s=batch / reference_s, ratio_to_reference=best / reference_s,
        gflops_per_s=None if not flops else flops * batch * steps / best / 1e9)


def _batch(data, model, n):
    x, y = data.tensors("test", torch.arange(n).numpy())
    device = next(model.parameters()).device
    return x.to(device), y.to(device)


@pytest.mark.parametrize("name", list(KERNELS))
def test_labelflip_kernel(benchmark, setup, name):
    data, model = setup
    k = KERNELS[name]
    x, y = _batch(data, model, k.batch)
    attack = make_attack(k.attack, **k.params)
    engine = choose_engine("auto", attack.native_kernel, model, x.device, attack.reference, bf16=not attack.minimal)

    def run():
        if attack.minimal:  # the engine `auto` picks (native where there is a kernel), plus the fp32 verdicts
            return run_attack(model, x, y, attack, batch_size=k.batch).clipped
        # The fixed-ε kernel alone, like the reference loop: no clean or adversarial verdicts around it.
        return fixed_adversarials(fast_copy(model), x, y, attack, k.epsilon, engine, batch_size=k.batch)[1]

    adv, reference_s = side_by_side(benchmark, run, lambda: k.reference(model, x, y), x.device)
    _record(benchmark, name, "labelflip", engine.describe(), x.device, k.batch, k.steps, reference_s,
            k.flops_per_step and step_flops(model, x, y, grad="input"))
    if k.epsilon is not None:
        norms = torch.linalg.vector_norm((adv - x.cpu()).flatten(1), ord=NORMS[attack.norm], dim=1)
        assert norms.max() <= k.epsilon * (1 + 1e-5)
    assert (predict(model, adv) != y.cpu()).any(), f"{name} found no adversarial on a batch of {k.batch}"


@pytest.mark.parametrize("name", [n for n, k in KERNELS.items()
                                  if ATTACKS[k.attack].minimal and ATTACKS[k.attack].native_kernel])
def test_foolbox_kernel(benchmark, setup, name):
    """The minimal attacks labelflip has its own kernel for, through the reference engine (Foolbox), as
    `run_attack` runs them: what `auto` is measured against."""
    data, model = setup
    k = KERNELS[name]
    x, y = _batch(data, model, k.batch)
    attack = make_attack(k.attack, **k.params)
    adv, reference_s = side_by_side(
        benchmark, lambda: run_attack(model, x, y, attack, batch_size=k.batch, engine="reference").clipped,
        lambda: k.reference(model, x, y), x.device)
    _record(benchmark, name, "foolbox", f"foolbox {version('foolbox')} (eager fp32)", x.device, k.batch, k.steps,
            reference_s, k.flops_per_step and step_flops(model, x, y, grad="input"))
    assert (predict(model, adv) != y.cpu()).any(), f"foolbox {name} found no adversarial on a batch of {k.batch}"


@pytest.mark.parametrize("name", [n for n, k in KERNELS.items() if k.torchattacks])
def test_torchattacks_kernel(benchmark, setup, name):
    pytest.importorskip("torchattacks", reason="torchattacks is a benchmark-only dependency: pip install .[bench]")
    data, model = setup
    k = KERNELS[name]
    x, y = _batch(data, model, k.batch)
    attack = k.torchattacks(model)
    adv, reference_s = side_by_side(benchmark, lambda: attack(x, y), lambda: k.reference(model, x, y), x.device)
    _record(benchmark, name, "torchattacks", "torchattacks (eager fp32)", x.device, k.batch, k.steps, reference_s,
            k.flops_per_step and step_flops(model, x, y, grad="input"))
    assert adv.shape == x.shape and 0 <= adv.min() and adv.max() <= 1


def test_training_slice(benchmark, setup):
    """One slice of a Fashion-MNIST epoch: labelflip's training step (channels_last, bf16 where native) against
    plain fp32 Adam steps, each on its own copy of the reference model."""
    data, model = setup
    recipe = recipe_for("fashion-mnist")
    x, y = data.tensors("train", torch.arange(TRAIN_SLICE).numpy())
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    bf16 = recipe.uses_bf16(device)
    fast, plain = copy.deepcopy(model), copy.deepcopy(model)
    fast.to(memory_format=torch.channels_last).train()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(fast.parameters(), lr=recipe.lr)

    def run():
        for i in range(0, TRAIN_SLICE, recipe.batch_size):
            train_step(fast, opt, x_cl[i:i + recipe.batch_size], y[i:i + recipe.batch_size], recipe, bf16)

    _, reference_s = side_by_side(benchmark, run, lambda: ref.train_steps(plain, x, y, recipe.batch_size, recipe.lr),
                                  device)
    engine = f"labelflip train ({'bf16 autocast' if bf16 else 'fp32'}, channels_last)"
    _record(benchmark, "train-step", "labelflip", engine, device, TRAIN_SLICE, 1, reference_s,
            step_flops(model, x[:8], y[:8], grad="weights"))
    assert all(torch.isfinite(p).all() for p in fast.parameters()), "bf16 training steps produced non-finite weights"


@pytest.mark.parametrize("impl", ["labelflip", "pyautoattack", "torchattacks"])
@pytest.mark.parametrize("name", list(APGD_KERNELS))
def test_apgd_kernel(benchmark, setup, name, impl):
    """APGD-CE and APGD-T: labelflip's native kernel (as `run_attack` calls it, without the verdicts), the official
    code (pyautoattack) and torchattacks, each side by side with the plain loop on the same batch."""
    if impl == "torchattacks":
        pytest.importorskip("torchattacks", reason="torchattacks is a benchmark-only dependency: pip install .[bench]")
    data, model = setup
    k = APGD_KERNELS[name]
    x, y = _batch(data, model, k.batch)
    if impl == "labelflip":
        attack = make_attack(k.attack, **k.params)
        engine = choose_engine("auto", attack.native_kernel, model, x.device, attack.reference)
        described = engine.describe()

        def run():
            return autoattack_adversarials(fast_copy(model), x, y, attack, k.epsilon, engine, batch_size=k.batch)[0]
    else:
        run = partial(k.pyautoattack(model) if impl == "pyautoattack" else k.torchattacks(model), x, y)
        described = f"{impl} {version(impl)} (eager fp32)"
    adv, reference_s = side_by_side(benchmark, run, lambda: k.reference(model, x, y), x.device)
    _record(benchmark, name, impl, described, x.device, k.batch, k.steps, reference_s, False)
    adv = adv.cpu()
    assert (adv - x.cpu()).abs().amax() <= k.epsilon * (1 + 1e-5) and 0 <= adv.min() and adv.max() <= 1
    assert (predict(model, adv) != y.cpu()).any(), f"{impl} {name} found no adversarial on a batch of {k.batch}"
