"""Running an attack over a set of images: batched, seeded, on the model's device, with the chosen engine."""

from __future__ import annotations

import time
from typing import Any

import eagerpy as ep
import foolbox as fb
import torch
from foolbox.criteria import Misclassification
from torch import nn
from tqdm.auto import tqdm

from ..devices import halving_on_oom, ieee_fp32
from ..errors import ConfigError
from ..models.architectures import predict
from .autoattack import AutoAttackFamily
from .bounds import Bounds, check_epsilon_for
from .engine import Engine, choose_engine, fast_copy
from .fixed import FixedAttack
from .kernels import loss_gradient, pgd
from .memo import Memo, fingerprint
from .minimal import MinimalAttack
from .registry import Attack, describe
from .result import AttackResult
from .seeds import batch_seed, random_start

# Per-batch images: on a CPU, batches that fit the caches run fastest; a GPU needs large batches to fill its cores
# (docs/speed.md).
DEFAULT_BATCH = {"cpu": 256, "cuda": 4096}


def default_batch(device_type: str) -> int:
    """Images per batch on a device of this type when no batch size is given."""
    return DEFAULT_BATCH.get(device_type, DEFAULT_BATCH["cpu"])


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack,
               epsilon: float | None = None, bounds: Bounds = Bounds(), batch_size: int | None = None,
               seed: int = 0, progress: bool = False, engine: str = "auto",
               ids: torch.Tensor | None = None, memo: Memo | None = None) -> AttackResult:
    """Attack the images on the model's device; everything in the result is on the CPU.

    Fixed-ε attacks need `epsilon` (in `attack.norm`, pixel units) and attack every image. Minimal attacks take
    no ε and attack only the images the model classifies correctly. Whatever the engine, each image's verdict
    (`adv_pred`, `success`) is the caller's fp32 model's on the returned adversarial.

    Randomness comes from `seed` and `ids`, each image's global id (default 0, 1, ...): random starts are drawn per
    image, whole-batch draws per batch from its first id (`seeds`). Images keep their results when the same ids
    come in another call, whatever the batch size for attacks that treat images independently.

    `memo` (one per model, which must not change meanwhile) shares the clean predictions and a single-step attack's
    gradients with the model's other runs on the same images; the results are the same with or without it.
    """
    epsilon = check_epsilon_for(attack, epsilon, bounds)
    device = next(model.parameters()).device
    batch_size = default_batch(device.type) if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if model.training:
        raise ConfigError("the model is in training mode; call model.eval() before attacking it")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    ids = torch.arange(len(images), device="cpu") if ids is None else ids.cpu()
    if ids.shape != (len(images),):
        raise ConfigError(f"{len(ids)} image ids for {len(images)} images")
    chosen = choose_engine(engine, attack.native_kernel, model, device, attack.reference, bf16=not attack.minimal)
    images, labels = images.cpu(), labels.cpu()
    fast = fast_copy(model)
    clean_pred = (predict(model, images) if memo is None
                  else memo.get(("predictions", fingerprint(images)), lambda: predict(model, images)))
    start = time.perf_counter()

    def attack_in(batch: int) -> tuple[torch.Tensor, ...]:
        """(attacked, raw, clipped, success, adv_pred, broken_by) in batches of `batch`."""
        broken_by = None
        if isinstance(attack, MinimalAttack):
            attacked = clean_pred == labels
            raw, clipped, success, adv_pred = _minimal(attack, model, fast, chosen, bounds, images, labels,
                                                       clean_pred, attacked, batch, progress, ids, seed)
        elif isinstance(attack, AutoAttackFamily):
            attacked = clean_pred == labels
            raw, broken_by = autoattack_adversarials(fast, images, labels, attack, epsilon, chosen, bounds, batch,
                                                     progress, ids, seed)
            clipped = raw
            adv_pred = predict(model, clipped)
            success = attacked & (adv_pred != labels)
            # The caller's fp32 model has the last word: a component's verdict it does not confirm is no break.
            broken_by = torch.where(success, broken_by, -1)
        else:
            attacked = torch.ones(len(images), dtype=torch.bool, device="cpu")
            raw, clipped = fixed_adversarials(fast, images, labels, attack, epsilon, chosen, bounds, batch, progress,
                                              ids, seed, memo)
            adv_pred = predict(model, clipped)
            success = adv_pred != labels
        return attacked, raw, clipped, success, adv_pred, broken_by

    # True fp32 wherever the attack runs fp32 (the reference engines, native-fp32, the verdicts): not CUDA's TF32.
    # Fixed-ε attacks draw per image, so a smaller batch after running out of GPU memory changes nothing; AutoAttack
    # and the minimal attacks are seeded per batch, and their batch grid stays the one asked for.
    with ieee_fp32():
        attacked, raw, clipped, success, adv_pred, broken_by = halving_on_oom(
            attack_in, batch_size, attack.name, halve=isinstance(attack, FixedAttack))
    seconds = time.perf_counter() - start
    # Batch by batch: rounding makes copies of the adversarials, which for large images would double the memory.
    rounded_pred = torch.cat([predict(model, bounds.to_8bit(part)) for part in clipped.split(batch_size)])
    params: dict[str, Any] = {**describe(attack), "engine": chosen.describe(), "epsilon": epsilon,
                              "bounds": [bounds.lower, bounds.upper], "criterion": "misclassification",
                              "batch_size": batch_size, "seed": seed}
    return AttackResult(epsilon=epsilon, norm=attack.norm, images=images, labels=labels, raw=raw, clipped=clipped,
                        success=success, attacked=attacked, clean_pred=clean_pred, adv_pred=adv_pred,
                        seconds=seconds, params=params, broken_by=broken_by, rounded_pred=rounded_pred)


def _batches(n: int, batch_size: int, desc: str, progress: bool) -> Any:
    return tqdm(range(0, n, batch_size), desc=desc, disable=not progress)


def fixed_adversarials(fast: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: FixedAttack,
                       epsilon: float, engine: Engine, bounds: Bounds = Bounds(), batch_size: int = 256,
                       progress: bool = False, ids: torch.Tensor | None = None,
                       seed: int = 0, memo: Memo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack kernel alone: raw and ε-clipped adversarials of every image, on the CPU, with no verdicts.
    Both engines start from the same per-image random starts (`seeds.random_start`). With `memo`, a single-step
    attack from the clean images (FGSM) takes each batch's gradient from there (native engine).

    `fast` is `engine.fast_copy(model)`; arguments are trusted (`run_attack` checks them), which is what lets the
    benchmarks time the kernel without the bookkeeping around it.
    """
    device = next(fast.parameters()).device
    fmodel = fb.PyTorchModel(fast, bounds=(bounds.lower, bounds.upper), device=device)
    foolbox_attack = attack.foolbox()
    # One copy to the device and one back, not one per batch: on a GPU each copy is a host synchronisation.
    images_on, labels_on = images.to(device), labels.to(device)
    ids = torch.arange(len(images), device="cpu") if ids is None else ids
    raws, clips = [], []
    for i in _batches(len(images), batch_size, f"{attack.name} ε={epsilon:g}", progress):
        x, y = images_on[i:i + batch_size], labels_on[i:i + batch_size]
        start = random_start(x, ids[i:i + batch_size], seed, epsilon, attack.norm) if attack.random_start else None
        if engine.name == "native":
            x = x.contiguous(memory_format=torch.channels_last)
            first = None
            if memo is not None and attack.steps == 1 and start is None and memo.holds(x):
                # The same at every ε: FGSM's step is ε times its sign.
                first = memo.get(("loss gradient", fingerprint(x, y), engine.bf16),
                                 lambda x=x, y=y: loss_gradient(fast, x.float(), y, engine.bf16))
            raw = clipped = pgd(fast, x, y, epsilon, attack.norm, attack.steps, attack.rel_stepsize, start, bounds,
                                engine.bf16, first_gradient=first)
        else:
            if start is not None:  # Foolbox adds it where it would have drawn its own (`get_random_start`)
                foolbox_attack.get_random_start = lambda x0, _epsilon, delta=start: x0 + ep.astensor(delta)
            raw, clipped, _ = foolbox_attack(fmodel, x, Misclassification(y), epsilons=epsilon)
        raws.append(raw.detach())
        clips.append(clipped.detach())
    if not raws:
        return images.clone(), images.clone()
    return (torch.cat(raws).contiguous().cpu(), torch.cat(clips).contiguous().cpu())


def autoattack_adversarials(fast: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: AutoAttackFamily,
                            epsilon: float, engine: Engine, bounds: Bounds = Bounds(), batch_size: int = 256,
                            progress: bool = False, ids: torch.Tensor | None = None,
                            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An AutoAttack-family attack batch by batch: (adversarials, per image the index of the component that broke
    it, or −1), on the CPU. Each batch's components are seeded with `seeds.batch_seed`, as the official evaluation
    seeds every batch."""
    device = next(fast.parameters()).device
    images_on, labels_on = images.to(device), labels.to(device)
    ids = torch.arange(len(images), device="cpu") if ids is None else ids
    adversarials, broken_by = [], []
    for i in _batches(len(images), batch_size, f"{attack.name} ε={epsilon:g}", progress):
        x = images_on[i:i + batch_size].contiguous(memory_format=torch.channels_last)
        adv, broken = attack.run(fast, x, labels_on[i:i + batch_size], epsilon=epsilon, bounds=bounds,
                                 native=engine.name == "native", bf16=engine.bf16,
                                 seed=batch_seed(seed, int(ids[i])))
        adversarials.append(adv.detach())
        broken_by.append(broken)
    if not adversarials:
        return images.clone(), torch.full((0,), -1, dtype=torch.int64, device="cpu")
    return torch.cat(adversarials).contiguous().cpu(), torch.cat(broken_by).cpu()


def _minimal(attack: MinimalAttack, model: nn.Module, fast: nn.Module, engine: Engine, bounds: Bounds,
             images: torch.Tensor, labels: torch.Tensor, clean_pred: torch.Tensor, attacked: torch.Tensor,
             batch_size: int, progress: bool, ids: torch.Tensor, seed: int,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(raw, clipped, success, adv_pred): the attack's output for the attacked images (the image elsewhere), and
    that output where it is a confirmed adversarial, else the image.

    Each batch of the images (batch_size at a time, as the fixed-ε attacks take them) has its attacked images
    attacked together, seeded from its first id: a batch's result depends on that batch alone, so any split of the
    images along the batch grid (runs/distributed.py) gives the same results.

    `fast` (`engine.fast_copy(model)`) runs the attack, natively or through Foolbox as `engine` says; `model`, the
    caller's fp32 model, confirms every adversarial."""
    device = next(fast.parameters()).device
    native = engine.name == "native"
    if not native:
        fmodel = fb.PyTorchModel(fast, bounds=(bounds.lower, bounds.upper), device=device)
        foolbox_attack = attack.foolbox()
    raw, found = images.clone(), torch.zeros(len(images), dtype=torch.bool, device="cpu")
    for i in _batches(len(images), batch_size, attack.name, progress):
        chunk = i + attacked[i:i + batch_size].nonzero().squeeze(1)
        if not len(chunk):
            continue
        # Brendel-Bethge's starting points draw from torch's global generator.
        torch.manual_seed(batch_seed(seed, int(ids[i])))
        x, y = images[chunk].to(device), labels[chunk].to(device)
        if native:
            adversarials, ok = attack.native(fast, x.contiguous(memory_format=torch.channels_last), y, bounds)
        else:
            adversarials, ok = attack.minimize(foolbox_attack, fmodel, x, y)
        raw[chunk], found[chunk] = adversarials.detach().cpu(), ok.detach().cpu()
    candidate = torch.where(_per_image(found, images), raw, images)
    candidate_pred = predict(model, candidate)
    # Success is the model's verdict on the very tensor we return, so adv_pred != label holds by construction.
    success = found & (candidate_pred != labels)
    clipped = torch.where(_per_image(success, images), candidate, images)
    return raw, clipped, success, torch.where(success, candidate_pred, clean_pred)


def _per_image(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flags.view(-1, *([1] * (like.dim() - 1)))
