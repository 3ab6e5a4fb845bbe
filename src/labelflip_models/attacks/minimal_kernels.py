"""labelflip's own kernels for the minimal-perturbation attacks: L2 and L∞ DeepFool, L2 Carlini-Wagner.

`deepfool` is Foolbox 3.3.4's `DeepFoolAttack` (`L2DeepFoolAttack`, `LinfDeepFoolAttack`): the top `candidates`
classes of the clean logits; each step linearises the differences between each candidate's loss ('logits': its
logit, 'crossentropy': its log-softmax) and the top class's, takes the candidate whose linearised boundary is
nearest (|difference| / dual norm of its gradient), adds the step to that boundary (+1e-4) to the accumulated
perturbation and sets the image to `x + (1 + overshoot)·total`, clipped to the bounds; an image stops once the
model misclassifies it. `carlini_wagner` is Foolbox 3.3.4's `L2CarliniWagnerAttack`: Adam (Foolbox's update) in
tanh space on `const·max(0, z_y − max_{k≠y} z_k + confidence) + ‖x' − x‖²`, `steps` steps per binary-search step
over `const` (×10 until an adversarial is found, then bisection; with 10 or more search steps the last one repeats
the search at the upper bound), keeping the smallest adversarial (with the confidence margin) found.

What differs is how they run, not what they compute:

- They run in fp32 only. A minimal attack measures the distance to the decision boundary, and bf16 moves it: on
  the Fashion-MNIST reference model (20 test images per class, an AVX512-bf16 CPU) L2 DeepFool in bf16 autocast
  left 38 of 185 images without an adversarial the fp32 model confirms, and C&W 11 more than in fp32.
- DeepFool drops an image from the batch once it is adversarial (Foolbox carries every image through every step
  until all are adversarial; an adversarial image's iterate is frozen there, so the result is the same), and takes
  the gradients of all candidates from one forward pass and one batched backward pass (Foolbox: one forward and
  one backward pass per candidate). Each image's result is independent of the others in its batch.
- C&W computes the model's gradient only for images whose hinge term is active (`max(0, ·) > 0`; at exactly 0 it
  takes torch's half gradient, as Foolbox's autograd does); for the others that term's gradient is zero, and the
  norm term's gradient is taken in closed form. Images whose hinge was inactive at the previous step run their
  forward pass without autograd; any whose hinge turned active runs again with it.
- C&W's early abort is Foolbox's: every tenth of the steps, the whole batch stops when the batch's summed loss has
  not fallen by 0.01% since the last check. So, as with Foolbox, an image's C&W result with `abort_early` depends
  on the images batched with it. (Judged per image instead, the abort stopped images early: a 14% larger median
  norm on 10 Fashion-MNIST test images per class at 5 x 100 steps.) Without `abort_early` each image's result is
  its own.
- C&W returns the image itself where it found no adversarial, and reports failure there. Foolbox returns an
  all-zero image there, which its own verdict then counts as a success wherever the model misclassifies a blank
  image (with a perturbation as large as the image); the reference engine corrects that (`L2CarliniWagner.minimize`).

Both return `(adversarials, success)`: success is the kernel model's own verdict (misclassification); callers
confirm it with the fp32 model (`run._minimal`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import Bounds


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).float()


def _per_image(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


# ---------------------------------------------------------------------------------------------------------- DeepFool


def deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, steps: int, candidates: int,
             overshoot: float, loss: str, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarials, success) for one batch: each image's last DeepFool iterate (the image itself where the
    first step found it misclassified already), and whether the model misclassifies it."""
    if norm not in ("l2", "linf"):
        raise ValueError(f"deepfool supports the l2 and linf norms, not {norm!r}")
    if loss not in ("logits", "crossentropy"):
        raise ValueError(f"expected loss to be 'logits' or 'crossentropy', got {loss!r}")
    x0 = x.float()
    logits = _logits(model, x0)
    k = min(candidates, logits.shape[-1])
    if k < 2:
        raise ValueError(f"expected the model output to have at least 2 classes, got {logits.shape[-1]}")
    classes = logits.argsort(dim=-1).flip(-1)[:, :k]  # Foolbox's order, ties included

    adversarials = x0.clone()
    success = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    # The images still attacked: their batch positions, iterates, accumulated perturbations, images, classes, labels.
    index = torch.arange(len(x0), device=x0.device)
    xa, total, origin, cls, labels = x0, torch.zeros_like(x0), x0, classes, y
    graph = None
    for step in range(steps + 1):
        # The clean logits serve the first check. Later checks run with autograd, so that the gradients can reuse
        # the forward pass when no image has become adversarial.
        if 0 < step < steps:
            logits, graph = _tracked_logits(model, xa)
        elif step == steps:
            logits = _logits(model, xa)
        adversarial = logits.argmax(-1) != labels
        if step == steps:  # Foolbox's final verdict on what the last step returned
            adversarials[index], success[index] = xa, adversarial
            break
        if adversarial.any():
            done, keep = adversarial.nonzero().squeeze(1), (~adversarial).nonzero().squeeze(1)
            adversarials[index[done]], success[index[done]] = xa[done], True
            if len(keep) == 0:
                break
            index, xa, total, origin, cls, labels = (t[keep] for t in (index, xa, total, origin, cls, labels))
            graph = None
        if graph is None:
            _, graph = _tracked_logits(model, xa)
        differences, grads = _candidate_gradients(graph, cls, loss)
        flat = grads.flatten(2)
        dual = flat.norm(dim=2) if norm == "l2" else flat.abs().sum(dim=2)
        distances = differences.abs() / (dual + 1e-8)
        best = distances.argmin(dim=1, keepdim=True)
        distance = distances.gather(1, best).squeeze(1) + 1e-4  # for numerical stability, as Foolbox
        grad = grads[torch.arange(len(best), device=best.device), best.squeeze(1)]
        if norm == "l2":
            step_ = _per_image(distance / (dual.gather(1, best).squeeze(1) + 1e-8), grad) * grad
        else:
            step_ = _per_image(distance, grad) * grad.sign()
        total = total + step_
        xa = (origin + (1.0 + overshoot) * total).clamp(bounds.lower, bounds.upper)
    return adversarials, success


def _candidate_gradients(graph: tuple[torch.Tensor, torch.Tensor], classes: torch.Tensor, loss: str,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(differences, gradients): each candidate's loss minus the top class's, (n, k-1), and their gradients with
    respect to the graph's input `x`, (n, k-1, *x.shape[1:]), in one batched backward pass through the graph."""
    x, logits = graph
    with torch.enable_grad():
        scores = logits if loss == "logits" else F.log_softmax(logits, dim=-1)  # -crossentropy(logits, class)
        differences = scores.gather(1, classes[:, 1:]) - scores.gather(1, classes[:, :1])
    m = differences.shape[1]
    # One backward pass per candidate, batched: grad_outputs[j] selects candidate j's difference of every image.
    select = torch.eye(m, device=x.device, dtype=differences.dtype).unsqueeze(1).expand(m, len(x), m)
    (grads,) = torch.autograd.grad(differences, x, select, is_grads_batched=True)
    return differences.detach(), grads.transpose(0, 1)


# ------------------------------------------------------------------------------------------------ Carlini-Wagner


def carlini_wagner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, binary_search_steps: int, steps: int,
                   stepsize: float, confidence: float, initial_const: float, abort_early: bool,
                   bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarials, success) for one batch: each image's smallest adversarial found (the image itself where
    none was), and whether one was found."""
    x = x.float()
    n = len(x)
    a, b = (bounds.lower + bounds.upper) / 2, (bounds.upper - bounds.lower) / 2
    w0 = ((x - a) / b * 0.999999).atanh()  # Foolbox's map into tanh space
    reconstructed = w0.tanh() * b + a
    consts = torch.full((n,), float(initial_const), dtype=torch.float64, device=x.device)
    lower = torch.zeros_like(consts)
    upper = torch.full_like(consts, math.inf)
    best = x.clone()
    best_norms = torch.full((n,), math.inf, device=x.device)
    for search_step in range(binary_search_steps):
        if search_step == binary_search_steps - 1 and binary_search_steps >= 10:
            consts = upper.clamp_max(1e10)  # in the last step, repeat the search once at the upper bound
        found = _cw_search_step(model, x, y, w0, reconstructed, consts.float(), best, best_norms, a=a, b=b,
                                steps=steps, stepsize=stepsize, confidence=confidence, abort_early=abort_early)
        upper = torch.where(found, consts, upper)
        lower = torch.where(found, lower, consts)
        consts = torch.where(upper.isinf(), consts * 10, (lower + upper) / 2)
    return best, best_norms.isfinite()


def _cw_search_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor,
                    reconstructed: torch.Tensor, consts: torch.Tensor, best: torch.Tensor, best_norms: torch.Tensor,
                    *, a: float, b: float, steps: int, stepsize: float, confidence: float,
                    abort_early: bool) -> torch.Tensor:
    """One binary-search step: Adam from delta = 0; updates `best`/`best_norms` in place and returns whether each
    image found an adversarial with its const."""
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    delta, m, v = torch.zeros_like(w0), torch.zeros_like(w0), torch.zeros_like(w0)
    hinge_active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    previous = math.inf
    check_every = math.ceil(steps / 10)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # Foolbox's AdamOptimizer
    for step in range(steps):
        th = (w0 + delta).tanh()
        perturbed = th * b + a
        logits, hinge, model_grad = _cw_model_term(model, perturbed, y, consts, confidence, hinge_active)
        hinge_active = hinge >= 0
        # Foolbox's gradient of const·max(0, hinge) + ‖perturbed − reconstructed‖², through x = tanh(w)·b + a.
        difference = perturbed - reconstructed
        grad = ((model_grad + 2 * difference) * b) * (1 - th * th)
        t = step + 1
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (v / (1 - beta2**t)).sqrt_().add_(eps)
        delta = delta.addcdiv(m, denominator, value=-stepsize / (1 - beta1**t))
        if abort_early and step % check_every == 0:
            # The batch's loss, as Foolbox: stop when it has not fallen by 0.01% since the last check.
            loss = (hinge.clamp_min(0) * consts).sum() + difference.flatten(1).square().sum(1).sum()
            if not loss <= 0.9999 * previous:
                break
            previous = loss.item()
        if confidence != 0:
            logits = logits + confidence * F.one_hot(y, logits.shape[-1])
        adversarial = logits.argmax(-1) != y
        found |= adversarial
        norms = (perturbed - x).flatten(1).norm(dim=1)
        new_best = adversarial & (norms < best_norms)
        best.copy_(torch.where(_per_image(new_best, best), perturbed, best))
        best_norms.copy_(torch.where(new_best, norms, best_norms))
    return found


# The fewest images with an inactive hinge (at least this many, and this share of the batch) worth a forward pass of
# their own without autograd; fewer go through the backward pass with the others (at zero gradient).
_MIN_SPLIT, _MIN_SPLIT_SHARE = 8, 0.05


def _cw_model_term(model: nn.Module, x: torch.Tensor, y: torch.Tensor, consts: torch.Tensor, confidence: float,
                   hinge_active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, hinge, gradient): the model's logits at `x`, the hinge z_y − max_{k≠y} z_k + confidence, and the
    gradient of Σ const·max(0, hinge) with respect to `x`.

    Only images whose hinge is active have a gradient. Those whose hinge was active at the last step
    (`hinge_active`) run forward with autograd, the others without; any of these whose hinge turned active runs
    again with autograd. Where few were inactive, all run with autograd (an inactive hinge's gradient is zero)."""
    grad = torch.zeros_like(x)
    # Splitting the batch pays only when it spares the backward pass of enough images.
    inactive = int((~hinge_active).sum())
    tracked = None if inactive < max(_MIN_SPLIT, _MIN_SPLIT_SHARE * len(x)) else hinge_active.nonzero().squeeze(1)
    graph = None
    if tracked is None:
        logits, graph = _tracked_logits(model, x)
    else:
        untracked = (~hinge_active).nonzero().squeeze(1)
        free = _logits(model, x[untracked])
        logits = free.new_empty(len(x), free.shape[-1])
        logits[untracked] = free
        if len(tracked):
            logits[tracked], graph = _tracked_logits(model, x[tracked])
    classes = logits.shape[-1]
    other = logits.masked_fill(F.one_hot(y, classes).bool(), -math.inf).argmax(-1)
    hinge = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, other[:, None]).squeeze(1) + confidence
    # d max(0, h)/dh as torch's maximum (Foolbox's autograd) has it: 1 above 0, 1/2 at 0, 0 below.
    weight = consts * torch.where(hinge > 0, 1.0, torch.where(hinge == 0, 0.5, 0.0))
    outputs = weight[:, None] * (F.one_hot(y, classes) - F.one_hot(other, classes)).float()
    if tracked is None:
        if (weight > 0).any():
            grad = _backward(graph, outputs)
        return logits, hinge, grad
    if graph is not None and (weight[tracked] > 0).any():
        grad[tracked] = _backward(graph, outputs[tracked])
    turned = ~hinge_active & (weight > 0)
    if turned.any():
        again = turned.nonzero().squeeze(1)
        _, graph = _tracked_logits(model, x[again])
        grad[again] = _backward(graph, outputs[again])
    return logits, hinge, grad


def _tracked_logits(model: nn.Module, x: torch.Tensor,
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The logits at `x` (detached), and the graph that `_backward` differentiates."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x).float()
    return logits.detach(), (x, logits)


def _backward(graph: tuple[torch.Tensor, torch.Tensor], outputs: torch.Tensor) -> torch.Tensor:
    """The gradient of Σ outputs·logits with respect to the graph's input."""
    x, logits = graph
    (grad,) = torch.autograd.grad(logits, x, outputs)
    return grad
