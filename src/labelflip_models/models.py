"""Architectures by name, and the wrapper that makes every model take pixels in [0, 1].

Normalisation lives inside the model so that ε is always measured in pixel space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import ConfigError

# The paper's normalisation: mean 0.5, std 1, so the network sees inputs in [-0.5, 0.5].
PAPER_MEAN = (0.5,)
PAPER_STD = (1.0,)


class Normalized(nn.Module):
    """(x - mean) / std in front of `net`; mean and std are buffers so they travel with the weights."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ConfigError(f"std must be positive, got {tuple(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def cw_mnist(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """Carlini & Wagner's MNIST network (conv32-conv32-pool-conv64-conv64-pool-fc200-fc200), 28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, num_classes),
    )


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "cw-mnist": cw_mnist,
}


def build_model(arch: str, in_channels: int = 1, num_classes: int = 10,
                mean: Sequence[float] = PAPER_MEAN, std: Sequence[float] = PAPER_STD) -> Normalized:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if len(mean) not in (1, in_channels) or len(std) not in (1, in_channels):
        raise ConfigError(f"mean/std need 1 or {in_channels} values, got {len(mean)} and {len(std)}")
    return Normalized(ARCHITECTURES[arch](in_channels, num_classes), mean, std)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of each image (on the model's device), returned on the CPU."""
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
