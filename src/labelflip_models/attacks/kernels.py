"""labelflip's own gradient kernels for the fixed-ε attacks (FGSM, L∞ PGD, L2 PGD).

Same algorithm as Foolbox 3.3.4's `LinfBaseGradientDescent`/`L2BaseGradientDescent`: an optional random start
drawn uniformly from the ε-ball (per image, `seeds.random_start`; the Foolbox engine is given the same one),
`steps` ascent steps of `rel_stepsize·ε` on the summed cross-entropy along the gradient's sign (L∞) or its
per-image unit L2 direction, each followed by projection onto the ε-ball and clipping to the bounds. What differs
is how it runs: the model may evaluate in bf16 (autocast), but the iterate, the projection and the clipping stay
fp32, so the ε-bound holds exactly whatever the model's precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import Bounds


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, norm: str, steps: int,
        rel_stepsize: float, start: torch.Tensor | None, bounds: Bounds, bf16: bool, *,
        first_gradient: torch.Tensor | None = None) -> torch.Tensor:
    """The adversarials for one batch (fp32, within ε of `x` in `norm` and within `bounds`), from x + `start`
    (a perturbation inside the ε-ball, `seeds.random_start`) or from x itself. `first_gradient`: the loss gradient
    at the starting point where the caller has it (loss_gradient's, e.g. memoised for FGSM at several ε)."""
    x = x.float()
    if norm not in ("linf", "l2"):
        raise ValueError(f"pgd supports the linf and l2 norms, not {norm!r}")
    adv = x if start is None else (x + start).clamp(bounds.lower, bounds.upper)
    step = rel_stepsize * epsilon
    for i in range(steps):
        grad = first_gradient if i == 0 and first_gradient is not None else loss_gradient(model, adv, y, bf16)
        adv = adv.detach() + step * _direction(grad, norm)
        adv = (x + _project(adv - x, epsilon, norm)).clamp(bounds.lower, bounds.upper)
    return adv.detach()


def loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The gradient of the summed cross-entropy at `x` (fp32; the model evaluated in bf16 autocast if `bf16`)."""
    x = x.detach().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), x)
    return grad


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _flat_norm(grad).clamp_min(1e-12)


def _project(delta: torch.Tensor, epsilon: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    return delta * (epsilon / _flat_norm(delta).clamp_min(1e-12)).clamp_max(1.0)

