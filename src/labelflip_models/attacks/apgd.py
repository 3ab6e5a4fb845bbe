"""labelflip's own APGD kernel (Croce & Hein 2020): APGD-CE and APGD-T, for L∞ and L2.

The algorithm of pyautoattack 0.2.0's `APGDAttack.attack_single_run`, step for step: a random start drawn as
the official code draws it (so one seed gives both engines one start), a step of 2ε, momentum 0.75, and the
step size halved at checkpoints where the loss oscillated or stopped improving. What differs is how it runs:
- the model may evaluate in bf16 (autocast) while the iterate, projection and clipping stay fp32, so the ε-bound
  holds exactly;
- the bookkeeping is masked tensor updates, with no host synchronisation in the loop;
- the model is the caller's channels_last copy with frozen weights (`engine.fast_copy`).
Like the official code it keeps optimising an image after its first adversarial iterate and returns its last one:
stopping at the first would be faster, but it lands a quarter of the images in another class (measured on the
Fashion-MNIST reference model), so its flip matrices would not be AutoAttack's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import Bounds

MOMENTUM = 0.75


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, norm: str, n_iter: int,
         rho: float, bounds: Bounds, bf16: bool, target: torch.Tensor | None = None,
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run: (adversarials, success). `target` None: cross-entropy loss (APGD-CE); else the targeted DLR
    loss towards `target` (APGD-T's inner run). Images it does not break come back unchanged."""
    x = x.float()
    shape = [-1] + [1] * (x.dim() - 1)
    adv = (x + epsilon * _unit(_start(x, norm), norm)).clamp(bounds.lower, bounds.upper)

    def loss_and_grad(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        point = point.detach().requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(point)
        logits = logits.float()
        per_image = F.cross_entropy(logits, y, reduction="none") if target is None else _dlr_targeted(logits, y, target)
        (g,) = torch.autograd.grad(per_image.sum(), point)
        return per_image.detach(), g.detach(), logits.detach().argmax(1) != y

    loss, grad, broken = loss_and_grad(adv)
    last, found = adv.clone(), broken.clone()
    best, grad_best, loss_best = adv.clone(), grad.clone(), loss.clone()
    step = torch.full((len(x), *shape[1:]), 2.0 * epsilon, device=x.device)
    previous = adv.clone()
    losses = torch.zeros(n_iter, len(x), device=x.device)
    check_at = max(int(0.22 * n_iter), 1)
    shrink, floor = max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    best_at_check, reduced_at_check = loss_best.clone(), torch.ones_like(loss_best)
    since = 0
    for i in range(n_iter):
        with torch.no_grad():
            momentum = adv - previous
            previous = adv
            a = MOMENTUM if i > 0 else 1.0
            moved = clip(adv + step * _direction(grad, norm), x, epsilon, norm, bounds)
            adv = clip(adv + (moved - adv) * a + momentum * (1 - a), x, epsilon, norm, bounds)
        loss, grad, broken = loss_and_grad(adv)
        with torch.no_grad():
            last = torch.where(broken.view(shape), adv, last)
            found |= broken
            losses[i] = loss
            better = loss > loss_best
            best = torch.where(better.view(shape), adv, best)
            grad_best = torch.where(better.view(shape), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            since += 1
            if since == check_at:
                # The official check compares the last `check_at` losses pairwise; before step `check_at` the
                # comparison reaches back to the buffer's last, still-zero row, as it does there.
                rises = sum((losses[i - c] > losses[i - c - 1]).float() for c in range(check_at))
                reduce = (rises <= check_at * rho) | ((reduced_at_check == 0) & (best_at_check >= loss_best))
                reduced_at_check, best_at_check = reduce.float(), loss_best.clone()
                step = torch.where(reduce.view(shape), step / 2, step)
                adv = torch.where(reduce.view(shape), best, adv)
                grad = torch.where(reduce.view(shape), grad_best, grad)
                check_at = max(check_at - shrink, floor)
                since = 0
    return torch.where(found.view(shape), last, x), found


def _start(x: torch.Tensor, norm: str) -> torch.Tensor:
    # The official draws: uniform in [-1, 1] (L∞) or Gaussian (L2), then scaled onto the ε-sphere by the caller.
    if norm == "linf":
        return 2 * torch.rand(x.shape, device=x.device) - 1
    return torch.randn(x.shape, device=x.device)


def _flat(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.pow(2).sum(1).sqrt()
    return size.view(-1, *([1] * (t.dim() - 1)))


def _unit(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (_flat(t, norm) + 1e-12)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "linf" else _unit(grad, "l2")


def clip(point: torch.Tensor, x: torch.Tensor, epsilon: float, norm: str, bounds: Bounds) -> torch.Tensor:
    """Projection onto the ε-ball around x, then onto the bounds (the official order)."""
    if norm == "linf":
        return torch.minimum(torch.maximum(point, x - epsilon), x + epsilon).clamp(bounds.lower, bounds.upper)
    delta = point - x
    size = _flat(delta, "l2")
    return (x + delta / (size + 1e-12) * torch.clamp(size, max=epsilon)).clamp(bounds.lower, bounds.upper)


def _dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The targeted DLR loss; needs at least four classes (it uses the third and fourth largest logits)."""
    ordered = logits.sort(dim=1).values
    rows = torch.arange(len(logits), device=logits.device)
    return -(logits[rows, y] - logits[rows, target]) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4])
                                                        + 1e-12)
