"""What would go wrong on the first GPU run, checked on the CPU.

- Device mixing: labelflip's code (and the benchmarks' reference loops) run with every tensor they make without
  naming a device made on the `meta` device instead, so a CPU tensor made where the input's device was meant
  meets a tensor on another device and fails here, as it would next to CUDA tensors (or for a user who set
  torch.set_default_device("cuda")). torch's and the attack libraries' own factories are left alone: torch's
  optimizers, for one, keep their step counters on the default device by design.
- CUDA itself is faked where the CPU has none: device counts, capabilities, device names, out-of-memory errors.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from labelflip_models import devices
from labelflip_models.attacks import ATTACKS, make_attack, run_attack
from labelflip_models.bench import throughput
from labelflip_models.devices import bf16_is_fast, halving_on_oom, ieee_fp32, process_device, resolve_device
from labelflip_models.errors import ConfigError
from labelflip_models.models.architectures import predict, predict_with_ties
from labelflip_models.models.train import train

from .fault_injection import REPO
from .helpers import TINY_RECIPE, tiny_dataset, weakened

sys.path.insert(0, str(REPO / "robustness_tests" / "benchmarks"))
import reference_loops as ref  # noqa: E402
import test_attack_kernels as bench  # noqa: E402

OURS = (str(REPO / "src"), str(REPO / "robustness_tests"))


class OurDefaultDevice(TorchFunctionMode):
    """Tensors that labelflip's code makes without naming a device go to `meta`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None and _made_by_us():
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _made_by_us() -> bool:
    """Whether the factory call being handled was written in labelflip's code (torch calls the mode from C, so
    the first frame outside this file is the caller's)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(OURS)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = _model()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every image classified correctly: every attack has work to do
    return model, x, y


def _epsilon(name: str) -> float | None:
    attack = make_attack(name)
    return None if attack.minimal else {"linf": 0.1, "l2": 1.0}[attack.norm]


@pytest.mark.parametrize("loop", ["fgsm", "linf-pgd", "l2-pgd", "cw", "l2-deepfool", "linf-deepfool", "apgd-ce",
                                  "apgd-t", "train"])
def test_reference_loops_make_their_tensors_on_the_inputs_device(batch, loop):
    model, x, y = batch
    trained = _model()
    calls = {
        "fgsm": lambda: ref.pgd(model, x, y, 0.1, "linf", 1, 1.0, False),
        "linf-pgd": lambda: ref.pgd(model, x, y, 0.1, "linf", 2, 0.1, True),
        "l2-pgd": lambda: ref.pgd(model, x, y, 1.0, "l2", 2, 0.1, True),
        "cw": lambda: ref.carlini_wagner(model, x, y, 2, 1.0),
        "l2-deepfool": lambda: ref.deepfool(model, x, y, "l2", steps=2),
        "linf-deepfool": lambda: ref.deepfool(model, x, y, "linf", steps=2),
        "apgd-ce": lambda: ref.apgd(model, x, y, 0.1, "linf", 6),
        "apgd-t": lambda: ref.apgd(model, x, y, 1.0, "l2", 6, targets=3),
        "train": lambda: ref.train_steps(trained, x, y, 4, 1e-3),
    }
    with OurDefaultDevice():
        calls[loop]()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_place_their_tensors_explicitly(batch, name):
    model, x, y = batch
    params = {"steps": 3} if ATTACKS[name].minimal and "bb" not in name else {}
    engines = ["native-fp32", "reference"] if ATTACKS[name].native_kernel else ["reference"]
    for engine in engines:
        with OurDefaultDevice():
            run = run_attack(model, x, y, make_attack(name, **params), _epsilon(name), engine=engine, batch_size=4)
        assert run.adv_pred.device.type == "cpu" and run.clipped.device.type == "cpu"


def test_training_places_its_tensors_explicitly():
    model, data = _model(), tiny_dataset(n_train=32, n_test=8)
    with OurDefaultDevice():
        train(model, data, TINY_RECIPE, seed=0)


def test_weakening_noise_lands_on_the_weights_device():
    model = _model()
    assert all(p.device.type == "meta" for p in weakened(model.to("meta"), 0.5).parameters())
    cpu = weakened(_model(), 0.5)
    assert torch.equal(next(cpu.parameters()), next(weakened(_model(), 0.5).parameters()))


@pytest.mark.parametrize("capability, fast", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_is_fast_on_a_gpu_only_with_bf16_tensor_cores(monkeypatch, capability, fast):
    # torch.cuda.is_bf16_supported() says True on a V100 or T4, where bf16 is emulated and slower than fp32.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert bf16_is_fast("cuda:1") is fast
    assert asked == [torch.device("cuda:1")]  # the device in question, not the current one


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine with `count` usable CUDA devices, as far as resolve_device can tell without starting one."""
    started: list[str] = []

    def install(count: int, start_error: Exception | None = None) -> list[str]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)

        def zeros(*args, device=None, **kwargs):
            started.append(device)
            if start_error is not None:
                raise start_error
            return torch.empty(0)
        monkeypatch.setattr(devices.torch, "zeros", zeros)
        return started
    return install


def test_a_cuda_index_beyond_the_devices_is_a_clear_error(fake_gpus):
    fake_gpus(2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match=r"device 'cuda:2' does not exist: this machine has 2 CUDA devices "
                                          r"\(cuda:0 to cuda:1\); choose `device` from those"):
        resolve_device("cuda:2")


def test_cuda_that_cannot_start_fails_loudly_or_auto_falls_back(fake_gpus):
    started = fake_gpus(1, RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore"))
    with pytest.raises(ConfigError, match=r"^device 'cuda' cannot start: CUDA error: no kernel image is available "
                                          r"for execution on the device; use `device` cpu or auto$"):
        resolve_device("cuda")
    with pytest.warns(UserWarning, match=r"device auto runs on the CPU: device 'cuda' cannot start: CUDA error"):
        assert resolve_device("auto") == "cpu"
    with pytest.warns(UserWarning, match="device auto runs on the CPU"):
        assert process_device("auto", "gw0") == "cpu"
    with pytest.raises(ConfigError, match="cannot start"):
        process_device("cuda", "gw0")
    assert started == ["cuda", "cuda", "cuda", "cuda"]


def test_each_process_starts_only_its_own_gpu(fake_gpus):
    # An option check, or a worker before it is pinned, starts nothing: no CUDA context on GPU 0 from every
    # process; each worker then starts the GPU it was given.
    started = fake_gpus(4)
    assert resolve_device("cuda", start=False) == "cuda" and started == []
    assert process_device("cuda", "gw6") == "cuda:2" and started == ["cuda:2"]
    assert process_device("auto", "gw1") == "cuda:1" and started == ["cuda:2", "cuda:1"]


def _gpu_present(monkeypatch, present: bool, cuda_build: str | None = "13.0", torch_says: str | None = None):
    monkeypatch.setattr(devices.os.path, "exists", lambda path: present and path == "/dev/nvidiactl")
    monkeypatch.setattr(torch.version, "cuda", cuda_build)

    def is_available():
        if torch_says:
            warnings.warn(torch_says, UserWarning, stacklevel=2)
        return False
    monkeypatch.setattr(torch.cuda, "is_available", is_available)


def test_auto_reports_falling_back_to_the_cpu_on_a_gpu_machine(monkeypatch):
    too_old = "CUDA initialization: The NVIDIA driver on your system is too old (found version 11040)."
    _gpu_present(monkeypatch, True, torch_says=too_old)
    with pytest.warns(UserWarning, match=r"device auto runs on the CPU: CUDA initialization: The NVIDIA driver"):
        assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match=r"device 'cuda' requested but CUDA is not usable here: CUDA "
                                          r"initialization: The NVIDIA driver on your system is too old"):
        resolve_device("cuda")
    _gpu_present(monkeypatch, True, cuda_build=None)
    with pytest.warns(UserWarning, match=r"is a CPU-only build; install a CUDA build of torch"):
        resolve_device("auto")


def test_auto_is_silent_where_the_gpus_are_hidden_on_purpose(monkeypatch):
    _gpu_present(monkeypatch, True, torch_says="CUDA initialization: no CUDA-capable device is detected")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_device("auto") == "cpu"
    assert not [w for w in caught if "labelflip" in str(w.message)]


def test_auto_is_silent_on_a_machine_without_a_gpu(monkeypatch):
    _gpu_present(monkeypatch, False, torch_says="Found no NVIDIA driver on your system.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_device("auto") == "cpu"
    assert not [w for w in caught if "labelflip" in str(w.message)]  # torch's own warning is torch's to give
    with pytest.raises(ConfigError, match="requested but CUDA is not usable here: no CUDA device"):
        resolve_device("cuda:0")


def test_cli_names_its_option_for_a_missing_gpu(fake_gpus, capsys):
    from .helpers import run_cli

    fake_gpus(1)
    rc, _, err = run_cli(capsys, ["throughput", "--arch", "cw-cifar", "--device", "cuda:4"])
    assert rc == 2 and err.count("\n") == 1, err
    assert "device 'cuda:4' does not exist" in err and "--device" in err and "Traceback" not in err


class PrecisionSpy(nn.Module):
    """Records cuDNN's fp32 convolution setting, and whether gradients were on (an attack step rather than a
    verdict), at every forward pass, of itself and of the copies the engines make (one shared list)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()
        self.seen: list[tuple[str, bool]] = []

    def __deepcopy__(self, memo):
        twin = PrecisionSpy()
        twin.net.load_state_dict(self.net.state_dict())
        twin.seen = self.seen
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cudnn.conv.fp32_precision, torch.is_grad_enabled()))
        return self.net(x)


@pytest.fixture
def tf32_default(monkeypatch):
    # CUDA's default for convolutions; set here, where no GPU changes anything, so the switch can be seen.
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "tf32"
    yield
    conv.fp32_precision = saved


@pytest.mark.parametrize("name, engine", [("linf-pgd", "reference"), ("linf-pgd", "native-fp32"),
                                          ("l2-deepfool", "native-fp32"), ("linf-apgd-ce", "reference")])
def test_fp32_attacks_and_verdicts_run_in_true_fp32(tf32_default, batch, name, engine):
    _, x, y = batch
    spy = PrecisionSpy().eval()
    run_attack(spy, x, y, make_attack(name), _epsilon(name), engine=engine, batch_size=4)
    assert any(grad for _, grad in spy.seen), "the attack's own steps were not seen"
    assert {precision for precision, _ in spy.seen} == {"ieee"}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # the caller's setting is back


def test_fp32_training_and_prediction_run_in_true_fp32(tf32_default):
    spy = PrecisionSpy()
    data = tiny_dataset(n_train=32, n_test=8)
    train(spy, data, TINY_RECIPE, seed=0)
    predict(spy.eval(), torch.rand(3, 1, 28, 28))
    assert {precision for precision, _ in spy.seen} == {"ieee"}
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


def test_ieee_fp32_restores_settings_after_an_error():
    matmul = torch.backends.cuda.matmul.fp32_precision
    with pytest.raises(KeyError), ieee_fp32():
        raise KeyError
    assert torch.backends.cuda.matmul.fp32_precision == matmul


class SmallMemory(nn.Module):
    """A model that runs out of (GPU) memory above `fits` images per forward pass."""

    def __init__(self, fits: int) -> None:
        super().__init__()
        self.net, self.fits, self.sizes = _model(), fits, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB")
        return self.net(x)


def test_attacks_halve_their_batch_until_it_fits(batch):
    _, x, y = batch
    x, y = torch.cat([x] * 4), torch.cat([y] * 4)
    small = SmallMemory(fits=8).eval()
    with pytest.warns(UserWarning) as caught:
        backed_off = run_attack(small, x, y, make_attack("linf-pgd"), 0.1, engine="native-fp32", batch_size=32)
    assert "linf-pgd ran out of GPU memory; retrying with batches of 8" in [str(w.message)[11:] for w in caught]
    direct = run_attack(small.net, x, y, make_attack("linf-pgd"), 0.1, engine="native-fp32", batch_size=32)
    # Per-image random starts: the smaller batch gives the run the batch asked for would have given.
    assert torch.equal(backed_off.clipped, direct.clipped) and torch.equal(backed_off.adv_pred, direct.adv_pred)
    assert backed_off.params == {**direct.params}


@pytest.mark.parametrize("name", ["l2-deepfool", "linf-apgd-ce"])
def test_batch_seeded_attacks_keep_their_batch_grid(batch, name):
    _, x, y = batch
    with pytest.raises(ConfigError, match=rf"{name} ran out of GPU memory in batches of 8; its results depend on "
                                          r"the batch grid.*choose a smaller `batch_size`"):
        run_attack(SmallMemory(fits=4).eval(), x, y, make_attack(name), _epsilon(name), engine="native-fp32",
                   batch_size=8)


def test_out_of_memory_at_one_image_is_a_clear_error():
    with pytest.raises(ConfigError, match="prediction runs out of GPU memory even one image at a time"), \
            pytest.warns(UserWarning):
        predict(SmallMemory(fits=0).eval(), torch.rand(4, 1, 28, 28), batch_size=4)
    sizes = []

    def work(size: int) -> int:
        sizes.append(size)
        if size > 3:
            raise torch.OutOfMemoryError("out of memory")
        return size * 10

    with pytest.warns(UserWarning):
        assert halving_on_oom(work, 13, "work") == 30
    assert sizes == [13, 6, 3]


class Tied(nn.Module):
    """Logits of classes 0 and 1 equal at the image's first pixel = 0.5, apart from a jitter of 1e-6 that depends
    on the batch size, as a GPU's shape-dependent kernels round the same image differently."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1)[:, 0] * 10 + self.anchor
        jitter = 1e-6 * (len(x) % 2 * 2 - 1)
        return torch.stack([a, 10 - a + jitter, torch.zeros_like(a)], 1)


def test_boundary_ties_are_told_from_real_disagreements():
    x = torch.zeros(3, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.5, 0.5, 0.9])
    model = Tied().eval()
    alone, together = predict(model, x[:2]), predict(model, x)
    assert alone[0] != together[0]  # the batch shape decides a boundary image's class
    recorded = torch.tensor([0, 1, 1])  # images 0 and 1 on the boundary; image 2 is class 0 by a wide margin
    now, tied = predict_with_ties(model, x, recorded)
    assert tied.tolist() == [True, True, False] and now[2] == 0


def test_gpu_peaks_name_the_nvl_parts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    expected = {"NVIDIA H100 NVL": 835.5e12, "NVIDIA H200 NVL": 835.5e12, "NVIDIA H200": 989e12,
                "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA A100-SXM4-80GB": 312e12,
                "Tesla V100-SXM2-16GB": None}
    for name, peak in expected.items():
        assert throughput._bf16_peak_flops(torch.device("cuda")) == peak, name


def test_benchmarks_time_to_the_last_gpu_kernel(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))

    class Benchmark:  # pytest-benchmark's pedantic mode: setup, then the timed call, per round
        def pedantic(self, fn, setup, rounds, iterations, warmup_rounds):
            for _ in range(rounds + warmup_rounds):
                setup()
                result = fn()
            return result

    result, best = bench.side_by_side(Benchmark(), lambda: events.append("fn") or 7, lambda: events.append("ref"),
                                      torch.device("cuda"))
    assert result == 7 and best >= 0
    assert events == ["sync", "ref", "sync", "fn", "sync"] * (bench.ROUNDS + 1)


def test_throughput_times_from_an_idle_gpu_to_its_last_kernel(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    throughput._timed(lambda n: events.append(f"run {n}"), 3, torch.device("cuda"))
    assert events == ["sync", "run 3", "sync"]


def test_the_gpu_check_has_cuda_tests_to_run():
    # scripts/gpu-check runs `pytest -m cuda`: at least one test must carry the marker.
    assert "cuda" in [mark.name for mark in test_on_the_gpu.pytestmark]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["fgsm", "linf-pgd", "l2-pgd", "l2-cw", "l2-deepfool", "linf-deepfool",
                                  "linf-apgd-ce"])
def test_on_the_gpu(name):
    """Each engine on a real GPU: in true fp32 its verdicts are the CPU's on the same images, bar a few
    boundary cases."""
    model, x = _model(), torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    engine = "native-fp32" if ATTACKS[name].native_kernel else "reference"
    attack = make_attack(name, **({"steps": 100, "binary_search_steps": 2} if name == "l2-cw" else {}))
    gpu = run_attack(model.cuda(), x, y, attack, _epsilon(name), engine=engine, batch_size=32)
    cpu = run_attack(model.cpu(), x, y, attack, _epsilon(name), engine=engine, batch_size=32)
    agree = (gpu.adv_pred == cpu.adv_pred).float().mean().item()
    assert agree >= 0.9, f"{name}: GPU and CPU verdicts agree on {agree:.0%} of the images"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reference_loops_and_weakening_on_the_gpu():
    model, x = _model().cuda(), torch.rand(8, 1, 28, 28, device="cuda")
    with torch.no_grad():
        y = model(x).argmax(1)
    for adv in (ref.pgd(model, x, y, 1.0, "l2", 2, 0.1, True), ref.carlini_wagner(model, x, y, 2, 1.0),
                ref.apgd(model, x, y, 0.1, "linf", 6, targets=3), ref.deepfool(model, x, y, "l2", steps=2)):
        assert adv.device == x.device
    assert next(weakened(model, 0.5).parameters()).device == x.device


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ieee_fp32_is_fp32_on_the_gpu():
    # TF32 (cuDNN's default for fp32 convolutions) errs by about 1e-3 relative; fp32 by about 1e-6.
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 64, 32, 32, generator=generator), torch.randn(64, 64, 3, 3, generator=generator)
    exact = torch.nn.functional.conv2d(x.double(), w.double())
    with ieee_fp32():
        got = torch.nn.functional.conv2d(x.cuda(), w.cuda()).cpu().double()
    assert ((got - exact).abs().max() / exact.abs().max()).item() < 1e-5
