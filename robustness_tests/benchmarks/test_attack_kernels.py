"""Attack-kernel timings on one fixed batch: Foolbox's FGSM and LinfPGD as labelflip runs them, and
the same work as a plain eager fp32 PyTorch loop (the reference). Each benchmark records images/s and
`ratio_to_reference` (its time / the reference loop's time for the same work, measured in this run).

Run without xdist:  pytest robustness_tests/benchmarks -p no:xdist --benchmark-json=bench.json
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from labelflip_models.attacks import FGSM, LinfPGD, run_attack

BATCH = 256
EPSILON = 0.05
ROUNDS = 3


def plain_pgd(model, x, y, eps, steps, rel_stepsize, random_start):
    """Foolbox's LinfPGD semantics in plain PyTorch: uniform random start, signed-gradient steps of
    rel_stepsize·ε, projection onto the ε-ball and the [0, 1] box after every step."""
    delta = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + rel_stepsize * eps * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv


KERNELS = {
    # name: (labelflip kernel, plain reference doing the same work)
    "fgsm": (FGSM(), dict(steps=1, rel_stepsize=1.0, random_start=False)),
    "linf-pgd": (LinfPGD(), dict(steps=40, rel_stepsize=0.01 / 0.3, random_start=True)),
}


@pytest.fixture(scope="module")
def batch(labelflip_dataset, labelflip_reference_model):
    data = labelflip_dataset("fashion-mnist")
    model = labelflip_reference_model(data)
    x, y = data.tensors("test", torch.arange(BATCH).numpy())
    return model, x, y


@pytest.fixture(scope="module")
def reference_seconds(batch):
    """Best-of-ROUNDS time of the plain loop for each kernel's work, measured in this run."""
    model, x, y = batch
    seconds = {}
    for name, (_, spec) in KERNELS.items():
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            plain_pgd(model, x, y, EPSILON, **spec)
            times.append(time.perf_counter() - start)
        seconds[name] = min(times)
    return seconds


def _record(benchmark, name, reference_seconds, device):
    best = benchmark.stats.stats.min
    steps = KERNELS[name][1]["steps"]
    benchmark.extra_info.update(kernel=name, batch=BATCH, epsilon=EPSILON, steps=steps, device=str(device),
                                images_per_s=BATCH / best, image_steps_per_s=BATCH * steps / best,
                                ratio_to_reference=best / reference_seconds[name])


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_foolbox_kernel(benchmark, batch, reference_seconds, name):
    model, x, y = batch
    attack = KERNELS[name][0]
    result = benchmark.pedantic(run_attack, args=(model, x, y, attack, EPSILON), kwargs={"batch_size": BATCH},
                                rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _record(benchmark, name, reference_seconds, x.device)
    assert result.linf_norms.max() <= EPSILON + 1e-6
    assert result.success.any(), "the attack found no adversarial at all on a batch of 256"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_plain_torch_reference(benchmark, batch, reference_seconds, name):
    model, x, y = batch
    adv = benchmark.pedantic(plain_pgd, args=(model, x, y, EPSILON), kwargs=KERNELS[name][1],
                             rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _record(benchmark, name, reference_seconds, x.device)
    assert (adv - x).abs().max() <= EPSILON + 1e-6
