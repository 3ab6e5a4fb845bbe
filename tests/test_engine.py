"""The attack engines: labelflip's native kernels against Foolbox, engine choice, and per-worker device pinning."""

import pytest
import torch

from labelflip_models.attacks import FGSM, L2PGD, Bounds, LinfPGD, make_attack, run_attack
from labelflip_models.attacks.engine import Engine, choose_engine, fast_copy
from labelflip_models.devices import bf16_is_fast, process_device, worker_device
from labelflip_models.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("attack, epsilon", [(FGSM(), 0.1), (LinfPGD(steps=10), 0.1), (FGSM(random_start=True), 0.1)])
def test_native_fp32_reproduces_foolbox_exactly_in_linf(tiny, attack, epsilon):
    # Same random-start draws, same steps, same projection: the same adversarials, bit for bit.
    model, x, y = tiny
    ours = run_attack(model, x, y, attack, epsilon, seed=5, engine="native-fp32")
    ref = run_attack(model, x, y, attack, epsilon, seed=5, engine="foolbox")
    assert torch.equal(ours.clipped, ref.clipped)
    assert torch.equal(ours.adv_pred, ref.adv_pred)
    assert ours.params["engine"] != ref.params["engine"]


def test_native_fp32_matches_foolbox_in_l2(tiny):
    # L2 steps divide by the gradient norm, whose summation order differs with the memory layout: equal to rounding.
    model, x, y = tiny
    ours = run_attack(model, x, y, L2PGD(steps=10), 1.0, seed=5, engine="native-fp32")
    ref = run_attack(model, x, y, L2PGD(steps=10), 1.0, seed=5, engine="foolbox")
    assert torch.allclose(ours.clipped, ref.clipped, atol=1e-3)
    assert ours.norms.max() <= 1.0 + 1e-5


@pytest.mark.parametrize("attack, epsilon", [(FGSM(), 0.03), (LinfPGD(steps=10), 0.03), (L2PGD(steps=10), 0.5)])
def test_bf16_engine_keeps_the_bound_and_is_deterministic(tiny, attack, epsilon):
    model, x, y = tiny
    a = run_attack(model, x, y, attack, epsilon, seed=2, engine="native")
    b = run_attack(model, x, y, attack, epsilon, seed=2, engine="native")
    assert a.norms.max() <= epsilon + 1e-6  # the projection runs in fp32 whatever the model's precision
    assert a.clipped.min() >= 0 and a.clipped.max() <= 1
    assert torch.equal(a.clipped, b.clipped)
    # The verdict is the fp32 model's on the returned tensor, not the bf16 forward's.
    assert torch.equal(a.adv_pred, model(a.clipped).argmax(1))
    assert torch.equal(a.success, a.adv_pred != y)


def test_native_respects_other_bounds(tiny):
    model, x, y = tiny
    result = run_attack(model, x * 2 - 1, y, LinfPGD(steps=3), 0.2, bounds=Bounds(-1, 1), engine="native")
    assert result.clipped.min() >= -1 and result.clipped.max() <= 1
    assert result.norms.max() <= 0.2 + 1e-6


def test_engine_choice(tiny):
    model = tiny[0]
    fast = bf16_is_fast(CPU)
    assert choose_engine("auto", True, model, CPU) == Engine("native", bf16=fast)
    assert choose_engine("auto", False, model, CPU) == Engine("foolbox", bf16=False)
    assert choose_engine("foolbox", True, model, CPU) == Engine("foolbox", bf16=False)
    assert choose_engine("native-fp32", True, model, CPU) == Engine("native", bf16=False)
    scripted = torch.jit.script(model)
    assert choose_engine("auto", True, scripted, CPU) == Engine("native", bf16=False)
    with pytest.raises(ConfigError, match="TorchScript"):
        choose_engine("native", True, scripted, CPU)
    with pytest.raises(ConfigError, match="no kernel for this attack"):
        choose_engine("native", False, model, CPU)
    with pytest.raises(ConfigError, match="unknown engine 'fast'"):
        choose_engine("fast", True, model, CPU)


def test_minimal_attacks_without_a_kernel_run_through_foolbox_even_under_auto(tiny):
    model, x, y = tiny
    assert run_attack(model, x[:8], y[:8], make_attack("l2-deepfool", steps=5)).params["engine"].startswith(
        "labelflip native")
    assert not make_attack("l1-bb").native_kernel
    with pytest.raises(ConfigError, match="no kernel"):
        run_attack(model, x[:8], y[:8], make_attack("l1-bb", steps=5), engine="native")


def test_fast_copy_leaves_the_callers_model_alone(tiny):
    model = tiny[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fast_copy(model)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = tiny[1][:4]
    assert torch.allclose(fast(x), model(x), atol=1e-5)


@pytest.mark.parametrize("device, worker, count, expected", [
    ("cuda", "gw0", 4, "cuda:0"), ("cuda", "gw5", 4, "cuda:1"), ("cuda", "gw7", 8, "cuda:7"),
    ("cuda", "gw3", 1, "cuda"),  # one GPU: every worker shares it
    ("cuda", None, 4, "cuda"),  # no xdist
    ("cuda:2", "gw0", 4, "cuda:2"),  # an explicit GPU is kept
    ("cpu", "gw1", 4, "cpu"),
])
def test_worker_device_pinning(device, worker, count, expected):
    assert worker_device(device, worker, count) == expected


def test_worker_device_rejects_odd_worker_ids():
    with pytest.raises(ConfigError, match="worker id"):
        worker_device("cuda", "worker-a", 2)


def test_each_worker_process_gets_one_gpu(monkeypatch):
    # A faked 3-GPU machine: workers gw0..gw3 get cuda:0, 1, 2, 0 and make it their current device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr("labelflip_models.devices.start_device", lambda device, auto=False: device)
    got = [process_device("auto", f"gw{i}") for i in range(4)]
    assert got == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert current == got
    assert process_device("cpu", "gw1") == "cpu"
