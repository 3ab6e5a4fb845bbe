"""Which torch device to run on (CUDA when present, or asked for, else the CPU), and what it runs fast."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def share_cpu_threads(processes: int) -> None:
    """Give this process its share of the cores when `processes` run side by side (e.g. xdist workers): each using
    all of them oversubscribes the CPU, which is slower than sharing."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))


def resolve_device(name: str = "auto") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use `device` cpu or auto")
    try:
        torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    return name


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether the device has native bf16 matrix units (emulated bf16 would be slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
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
    device = worker_device(resolve_device(requested), worker_id, torch.cuda.device_count())
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)  # so that a bare "cuda" tensor lands on this worker's GPU too
    return device


def device_class(device: torch.device | str) -> str:
    """Names hardware whose speed ratios are comparable: the CPU's vector ISA and bf16 support, or the GPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda-{torch.cuda.get_device_name(device)}"
    bf16 = "-bf16" if bf16_is_fast(device) else ""
    return f"{device.type}-{torch.backends.cpu.get_cpu_capability()}{bf16}"
