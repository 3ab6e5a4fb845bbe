"""The reference every benchmark is measured against: each attack (and a training step) as a plain eager fp32
PyTorch loop on the model as given (NCHW, weights requiring grad), written the obvious way.

These are the algorithms of Foolbox 3.3.4 with its defaults, and APGD's of the official AutoAttack code
(pyautoattack 0.2.0), so they do the same work as the kernels they time; they are benchmark code, not product
code, and check nothing beyond the ε-ball and the bounds. Every tensor they make is made on the input's device,
so they run on a GPU as they do on the CPU.
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
        adv = (x + eps * torch.rand(len(x), 1, 1, 1, device=x.device) * direction / _flat_norm(direction)).clamp(0, 1)
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
    best, best_norm = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
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
    rows = torch.arange(len(x), device=x.device)
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


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, n_iter: int, rho: float = 0.75,
         targets: int | None = None) -> torch.Tensor:
    """APGD-CE (`targets` None; one restart) or APGD-T towards each of the `targets` most likely other classes in
    turn, L∞ or L2: each run attacks only the images still classified correctly, as the official code does."""
    adv = x.clone()
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    for r in [None] if targets is None else range(2, targets + 2):
        rows = robust.nonzero().squeeze(1)
        if not len(rows):
            break
        target = None
        if r is not None:
            with torch.no_grad():
                target = model(x[rows]).sort(dim=1).indices[:, -r]
        found, out = _apgd_run(model, x[rows], y[rows], eps, norm, n_iter, rho, target)
        adv[rows[found]], robust[rows[found]] = out[found], False
    return adv


def _apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, n_iter: int, rho: float,
              target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run: momentum 0.75, a step of 2ε halved at checkpoints where the loss oscillated or stalled."""
    rows = torch.arange(len(x), device=x.device)

    def project(p: torch.Tensor) -> torch.Tensor:
        if norm == "linf":
            return torch.min(torch.max(p, x - eps), x + eps).clamp(0, 1)
        size = _flat_norm(p - x)
        return (x + (p - x) / (size + 1e-12) * size.clamp_max(eps)).clamp(0, 1)

    def loss_and_grad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = p.clone().requires_grad_(True)
        logits = model(p)
        if target is None:
            loss = F.cross_entropy(logits, y, reduction="none")
        else:  # the targeted DLR loss
            ordered = logits.sort(dim=1).values
            loss = -(logits[rows, y] - logits[rows, target]) / (ordered[:, -1] - 0.5 * (ordered[:, -3]
                                                                                       + ordered[:, -4]) + 1e-12)
        (grad,) = torch.autograd.grad(loss.sum(), p)
        return loss.detach(), grad, logits.argmax(1) != y

    start = 2 * torch.rand_like(x) - 1 if norm == "linf" else torch.randn_like(x)
    size = start.flatten(1).abs().amax(1).view(-1, 1, 1, 1) if norm == "linf" else _flat_norm(start)
    adv = (x + eps * start / (size + 1e-12)).clamp(0, 1)
    loss, grad, found = loss_and_grad(adv)
    out, previous = adv.clone(), adv.clone()
    best, best_grad, best_loss = adv.clone(), grad.clone(), loss.clone()
    step = torch.full((len(x), 1, 1, 1), 2 * eps, device=x.device)
    losses = torch.zeros(n_iter, len(x), device=x.device)
    checkpoint, since = max(int(0.22 * n_iter), 1), 0
    last_best, last_reduced = best_loss.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    for i in range(n_iter):
        with torch.no_grad():
            a = 0.75 if i > 0 else 1.0
            direction = grad.sign() if norm == "linf" else grad / (_flat_norm(grad) + 1e-12)
            moved = project(adv + step * direction)
            adv, previous = project(adv + (moved - adv) * a + (adv - previous) * (1 - a)), adv
        loss, grad, broken = loss_and_grad(adv)
        out[broken], found = adv[broken], found | broken
        losses[i] = loss
        better = loss > best_loss
        best[better], best_grad[better], best_loss[better] = adv[better], grad[better], loss[better]
        since += 1
        if since == checkpoint:  # before step `checkpoint` the comparison wraps to the buffer's zero rows
            rises = sum((losses[i - c] > losses[i - c - 1]).float() for c in range(checkpoint))
            reduce = (rises <= checkpoint * rho) | (~last_reduced & (last_best >= best_loss))
            last_reduced, last_best = reduce, best_loss.clone()
            step[reduce] /= 2
            adv[reduce], grad[reduce] = best[reduce], best_grad[reduce]
            checkpoint, since = max(checkpoint - max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)), 0
    return found, out
