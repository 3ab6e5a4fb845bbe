"""Which engine runs an attack, and in which precision.

`reference` runs an attack through the implementation that defines it: Foolbox 3 for Foolbox's attacks,
pyautoattack (the official AutoAttack code) for AutoAttack's; `foolbox` is another name for it. `native` runs the
attacks labelflip has kernels for, which follow the reference's algorithm but may evaluate the model in bf16.
Both run the model from a channels_last copy of its weights, which the CPU and GPU convolution kernels run
faster (1.45x for fp32 PGD on this CPU); the copy holds the same values in another memory layout, and the
caller's model is left alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib.metadata import version

import foolbox as fb
import torch
from torch import nn

from ..devices import bf16_is_fast
from ..errors import ConfigError

ENGINES = ("auto", "reference", "foolbox", "native", "native-fp32")
REFERENCES = ("foolbox", "pyautoattack")


@dataclass(frozen=True)
class Engine:
    name: str  # "native" or one of REFERENCES
    bf16: bool

    def describe(self) -> str:
        if self.name == "foolbox":
            return f"foolbox {fb.__version__}"
        if self.name == "pyautoattack":
            return f"pyautoattack {version('pyautoattack')}"
        return f"labelflip native ({'bf16 autocast' if self.bf16 else 'fp32'})"


def check_engine(requested: str, has_kernel: bool) -> None:
    """ConfigError unless `requested` can run an attack with (or without) a native kernel; needs no model."""
    if requested not in ENGINES:
        raise ConfigError(f"unknown engine {requested!r}; choose one of: {', '.join(ENGINES)}")
    if requested.startswith("native") and not has_kernel:
        raise ConfigError(f"engine {requested!r} has no kernel for this attack; use `engine` reference or auto")


def engine_where_it_applies(requested: str, has_kernel: bool) -> str:
    """`requested` for an attack that can run it; "auto" in place of a native engine for one without a native
    kernel: a session-wide engine setting applies to the attacks that have that engine."""
    return requested if has_kernel or not requested.startswith("native") else "auto"


def choose_engine(requested: str, has_kernel: bool, model: nn.Module, device: torch.device,
                  reference: str = "foolbox", bf16: bool = True) -> Engine:
    """`auto`: native (bf16 where the hardware runs it natively and the attack allows it, `bf16`) for attacks with
    a native kernel, else the attack's `reference` implementation.

    TorchScript models keep fp32: autocast does not reach inside a scripted graph on every backend.
    """
    check_engine(requested, has_kernel)
    if requested in ("reference", "foolbox") or (requested == "auto" and not has_kernel):
        return Engine(reference, bf16=False)
    if requested == "native-fp32":
        return Engine("native", bf16=False)
    if not bf16:
        return Engine("native", bf16=False)
    scripted = has_scripted_part(model)
    if requested == "native" and scripted:
        raise ConfigError("engine 'native' runs the model in bf16, which a TorchScript model cannot do reliably; "
                          "use native-fp32, reference or auto")
    return Engine("native", bf16=bf16_is_fast(device) and not scripted)


def has_scripted_part(model: nn.Module) -> bool:
    """Whether `model` is, or wraps (e.g. in a normalising module), a TorchScript module."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def fast_copy(model: nn.Module) -> nn.Module:
    """A channels_last copy of `model` with frozen weights, for attacking (gradients w.r.t. inputs only).

    A model with a TorchScript part is used as given: a layout change leaves scripted parameters as non-leaf
    tensors, which can then be neither frozen nor differentiated through as leaves.
    """
    if has_scripted_part(model):
        return model
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast.eval()
