"""The reference every benchmark is measured against: each attack (and a training step) as a plain eager fp32
PyTorch loop on the model as given (NCHW, weights requiring grad), written the obvious way.

These are the algorithms of Foolbox 3.3.4 with its defaults, so they do the same work as the kernels they time;
they are benchmark code, not product code, and check nothing beyond the ε-ball and the bounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int, rel_stepsize: float,
        random_start: bool) -> torch.Tensor:
    """FGSM (steps=1, rel_stepsize=1, no random start), L∞ PGD and L2 PGD."""
    if random_start and norm == "linf":
        adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    elif random_start:
        direction = torch.randn_like(x)
        adv = (x + eps * torch.rand(len(x), 1, 1, 1) * direction / _flat_norm(direction)).clamp(0, 1)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)
        step = grad.sign() if norm == "linf" else grad / _flat_norm(grad).clamp_min(1e-12)
        delta = adv.detach() + rel_stepsize * eps * step - x
        delta = delta.clamp(-eps, eps) if norm == "linf" else delta * (eps / _flat_norm(delta).clamp_min(1e-12)
                                                                       ).clamp_max(1)
        adv = (x + delta).clamp(0, 1)
    return adv


def carlini_wagner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, const: float,
                   stepsize: float = 0.01) -> torch.Tensor:
    """One binary-search step of L2 Carlini-Wagner: Adam in tanh space on ‖δ‖² + c·max(0, z_y − max_{k≠y} z_k),
    keeping the smallest adversarial found."""
    w0 = torch.atanh((x * 2 - 1) * 0.999999)
    w = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([w], lr=stepsize)
    best, best_norm = x.clone(), torch.full((len(x),), float("inf"))
    for _ in range(steps):
        adv = (torch.tanh(w0 + w) + 1) / 2
        logits = model(adv)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
        margin = (logits.gather(1, y[:, None]).squeeze(1) - other).clamp_min(0)
        norms = (adv - x).flatten(1).pow(2).sum(1)
        loss = (const * margin).sum() + norms.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            better = (logits.argmax(1) != y) & (norms.sqrt() < best_norm)
            best[better], best_norm[better] = adv[better].detach(), norms.sqrt()[better]
    return best


def deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, steps: int = 50, candidates: int = 10,
             overshoot: float = 0.02) -> torch.Tensor:
    """DeepFool on the top `candidates` classes: one forward and candidates−1 backward passes per step, until every
    image is adversarial."""
    with torch.no_grad():
        classes = model(x).argsort(1, descending=True)[:, :candidates]
    adv, total = x.clone(), torch.zeros_like(x)
    rows = torch.arange(len(x))
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = model(adv)
        done = logits.argmax(1) != y
        if done.all():
            break
        diffs, grads = [], []
        for k in range(1, candidates):
            diff = logits[rows, classes[:, k]] - logits[rows, classes[:, 0]]
            (grad,) = torch.autograd.grad(diff.sum(), adv, retain_graph=k < candidates - 1)
            diffs.append(diff.detach())
            grads.append(grad)
        diffs, grads = torch.stack(diffs, 1), torch.stack(grads, 1)
        dual = grads.flatten(2).norm(dim=2) if norm == "l2" else grads.flatten(2).abs().sum(2)
        distance = diffs.abs() / (dual + 1e-8)
        best = distance.argmin(1)
        grad, dist = grads[rows, best], distance[rows, best] + 1e-4
        if norm == "l2":
            step = (dist / (grad.flatten(1).norm(dim=1) + 1e-8)).view(-1, 1, 1, 1) * grad
        else:
            step = dist.view(-1, 1, 1, 1) * grad.sign()
        total = total + step
        adv = torch.where(done.view(-1, 1, 1, 1), adv.detach(), (x + (1 + overshoot) * total).clamp(0, 1))
    return adv.detach()


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float) -> None:
    """Plain fp32 Adam steps over `x` in batches: the training loop without any of labelflip's speed levers."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for i in range(0, len(x), batch_size):
        loss = F.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
