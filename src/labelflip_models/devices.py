"""Which torch device to run on (CUDA when present, or asked for, else the CPU), what it runs fast, and how fp32
work and memory are kept honest on it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from .errors import ConfigError

T = TypeVar("T")
# Ampere and later have bf16 tensor cores; torch.cuda.is_bf16_supported() also counts emulated bf16 (V100, T4),
# which is slower than fp32.
BF16_CAPABILITY = (8, 0)


def share_cpu_threads(processes: int) -> None:
    """Give this process its share of the cores when `processes` run side by side (e.g. xdist workers): each using
    all of them oversubscribes the CPU, which is slower than sharing."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def resolve_device(name: str = "auto", start: bool = True) -> str:
    """`name` checked: `auto` is CUDA where it works, else the CPU, with a warning where the machine has an NVIDIA
    GPU that CUDA cannot use; `cuda` or `cuda:N` must exist, or this raises ConfigError saying why.

    `start` also starts CUDA on the device (see start_device); a process that is yet to pick its own GPU (an xdist
    worker, a torchrun rank), or only validates an option, passes False and starts the device it picks.
    """
    if name == "auto":
        if not torch.cuda.is_available():
            if (problem := cuda_problem()) is not None:
                warnings.warn(f"labelflip: device auto runs on the CPU: {problem}", stacklevel=2)
            return "cpu"
        return start_device("cuda", auto=True) if start else "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        _check_cuda(name, device)
    return start_device(name) if start else name


def start_device(name: str, auto: bool = False) -> str:
    """The device to run on: `name`, once CUDA has started there with one small allocation, so that a broken
    install (a driver too old, no kernels for this GPU's architecture) fails now with its reason, not in the
    middle of a run. Where it cannot start: ConfigError, or with `auto` the CPU and a warning saying why. A CPU
    `name` is returned as it is."""
    if torch.device(name).type != "cuda":
        return name
    try:
        torch.zeros(1, device=name)
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problem = ConfigError(f"device {name!r} cannot start: {reason}; use `device` cpu or auto")
        if not auto:
            raise problem from None
        warnings.warn(f"labelflip: device auto runs on the CPU: {problem}", stacklevel=2)
        return "cpu"
    return name


def cuda_problem() -> str | None:
    """Why CUDA cannot be used on a machine that has an NVIDIA GPU (a CPU-only torch, a driver too old for the
    CUDA build, ...); None where CUDA works or there is no NVIDIA GPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return None  # the GPUs were hidden on purpose
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
        return None
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch"
    if caught:  # torch says why, e.g. "The NVIDIA driver on your system is too old"
        return str(caught[0].message).strip()
    return "the NVIDIA driver reports no usable CUDA device"


def _check_cuda(name: str, device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not usable here: "
                          f"{cuda_problem() or 'no CUDA device'}; use `device` cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {name!r} does not exist: this machine has {count} CUDA "
                          f"device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}); choose `device` from those")


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether the device has native bf16 matrix units (emulated bf16 would be slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= BF16_CAPABILITY
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:  # a private op: builds without it count as having no fast bf16
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def worker_device(device: str, worker_id: str | None, cuda_count: int) -> str:
    """The device an xdist worker runs on: with `cuda` (what auto resolves to on a GPU machine) and several GPUs,
    worker gwN takes cuda:(N mod count), so the workers spread evenly over the GPUs. An explicit cuda:K or cpu, a
    single GPU, or no xdist keeps `device`."""
    if worker_id is None or device != "cuda" or cuda_count < 2:
        return device
    index = worker_id.removeprefix("gw")
    if not index.isdigit():
        raise ConfigError(f"unexpected xdist worker id {worker_id!r}; expected gw0, gw1, ...")
    return f"cuda:{int(index) % cuda_count}"


def process_device(requested: str, worker_id: str | None) -> str:
    """The device for this process's models: `requested` resolved, then pinned to one GPU per xdist worker."""
    device = worker_device(resolve_device(requested, start=False), worker_id, torch.cuda.device_count())
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)  # so that a bare "cuda" tensor lands on this worker's GPU too
    return start_device(device, auto=requested == "auto")


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued kernels: CUDA runs asynchronously, so a timer read without this measures the
    queueing, and the next timed region pays for this one's work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_class(device: torch.device | str) -> str:
    """Names hardware whose speed ratios are comparable: the CPU's vector ISA and bf16 support, or the GPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda-{torch.cuda.get_device_name(device)}"
    bf16 = "-bf16" if bf16_is_fast(device) else ""
    return f"{device.type}-{torch.backends.cpu.get_cpu_capability()}{bf16}"


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls in true fp32 on CUDA while inside, the caller's settings restored after.

    cuDNN runs fp32 convolutions in TF32 by default (a 10-bit mantissa): a verdict, a reference attack or a
    `native-fp32` run would measure a boundary moved by rounding, and differ from the same run on the CPU. bf16
    autocast is unaffected: it casts before these settings apply.
    """
    settings = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    saved = [s.fp32_precision for s in settings]
    for s in settings:
        s.fp32_precision = "ieee"
    try:
        yield
    finally:
        for s, value in zip(settings, saved):
            s.fp32_precision = value


def halving_on_oom(work: Callable[[int], T], batch_size: int, what: str, halve: bool = True) -> T:
    """work(batch) for the first batch size that fits in GPU memory, trying `batch_size` and halving it after each
    torch.OutOfMemoryError (with a warning): xdist workers sharing one GPU, or a large model, can leave too little
    memory for the default batch. Only for work whose results do not depend on the batch size; with `halve`
    False an out-of-memory error becomes a ConfigError instead. Raises ConfigError where one image at a time
    does not fit."""
    batch = batch_size
    while True:
        try:
            return work(batch)
        except torch.OutOfMemoryError:
            pass  # leaving the handler drops the traceback, and with it the failed attempt's tensors
        if not halve:
            raise ConfigError(f"{what} ran out of GPU memory in batches of {batch}; its results depend on the batch "
                              "grid, so labelflip does not shrink it: choose a smaller `batch_size`, or run fewer "
                              "processes on the GPU")
        if batch == 1:
            raise ConfigError(f"{what} runs out of GPU memory even one image at a time; free the GPU (fewer "
                              "processes sharing it) or choose another `device`")
        torch.cuda.empty_cache()
        batch = max(1, batch // 2)
        warnings.warn(f"labelflip: {what} ran out of GPU memory; retrying with batches of {batch}", stacklevel=2)
