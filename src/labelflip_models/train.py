"""The training loop: seeded, deterministic on CPU, hyper-parameters in one place (RECIPES)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset
from .errors import ConfigError
from .models import predict


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float  # peak of the one-cycle schedule (Adam)
    pct_start: float = 0.25
    weight_decay: float = 0.0
    # CPU kernels' reductions depend on the thread count, so it is fixed for bit-identical weights.
    cpu_threads: int = 2


# One recipe per dataset for the smoke profile; mnist-5k has 4,000 training images and needs more epochs.
RECIPES: dict[str, Recipe] = {
    "fashion-mnist": Recipe("smoke", epochs=3, batch_size=128, lr=2e-3),
    "mnist": Recipe("smoke", epochs=3, batch_size=128, lr=2e-3),
    "mnist-5k": Recipe("smoke", epochs=20, batch_size=128, lr=2e-3),
}


def recipe_for(dataset_name: str) -> Recipe:
    if dataset_name not in RECIPES:
        raise ConfigError(f"no training recipe for dataset {dataset_name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[dataset_name]


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    return (predict(model, images) == labels).float().mean().item()


def train(model: nn.Module, data: Dataset, recipe: Recipe, seed: int, progress: bool = False) -> float:
    """Train `model` in place on its current device; return the test accuracy."""
    device = next(model.parameters()).device
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(recipe.cpu_threads)
    try:
        return _train(model, data, recipe, seed, progress, device)
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, data: Dataset, recipe: Recipe, seed: int, progress: bool,
           device: torch.device) -> float:
    torch.manual_seed(seed)  # dropout draws from the global generator
    shuffle = torch.Generator().manual_seed(seed)
    x, y = data.tensors("train")
    x, y = x.to(device), y.to(device)
    steps_per_epoch = -(-len(x) // recipe.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, pct_start=recipe.pct_start,
                                                total_steps=recipe.epochs * steps_per_epoch)
    bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=f"train {data.name}", disable=not progress)
    for _ in range(recipe.epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=shuffle).to(device).split(recipe.batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return accuracy(model, *data.tensors("test"))

