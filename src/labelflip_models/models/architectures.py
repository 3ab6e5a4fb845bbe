"""Architectures by name, and the wrapper that makes every model take pixels in [0, 1].

Normalisation lives inside the model so that ε is always measured in pixel space. Besides labelflip's own
architectures (`ARCHITECTURES`), `torchvision:<name>` and `timm:<name>` name a classifier of those zoos, built with
fresh random weights (never downloaded) for the dataset's class count, so that a user's state dict can fill them.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import halving_on_oom, ieee_fp32
from ..errors import ConfigError

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


def _cw_net(in_channels: int, num_classes: int, side: int, conv: tuple[int, int], fc: int) -> nn.Sequential:
    """Carlini & Wagner's net: conv-conv-pool-conv-conv-pool-fc-fc-out; 3x3 convs without padding, dropout 0.5."""
    flat = ((side - 4) // 2 - 4) // 2  # two unpadded convs (-4) then a 2x2 pool, twice
    return nn.Sequential(
        nn.Conv2d(in_channels, conv[0], 3), nn.ReLU(),
        nn.Conv2d(conv[0], conv[0], 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(conv[0], conv[1], 3), nn.ReLU(),
        nn.Conv2d(conv[1], conv[1], 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(conv[1] * flat * flat, fc), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(fc, fc), nn.ReLU(),
        nn.Linear(fc, num_classes),
    )


def cw_mnist(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """C&W's MNIST network (conv32-conv32-pool-conv64-conv64-pool-fc200-fc200), 28x28 inputs."""
    return _cw_net(in_channels, num_classes, side=28, conv=(32, 64), fc=200)


def cw_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """C&W's CIFAR network (conv64-conv64-pool-conv128-conv128-pool-fc256-fc256), 32x32 inputs."""
    return _cw_net(in_channels, num_classes, side=32, conv=(64, 128), fc=256)


class PreActBlock(nn.Module):
    """BN-ReLU before each 3x3 conv, identity shortcut (a 1x1 conv where the shape changes), He et al. 2016."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, the identity the raw one (kuangliu/pytorch-cifar).
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 for 32x32 inputs: 3x3 stem, stages of 2 blocks at 64/128/256/512 channels, and the final
    BN-ReLU of He et al. (kuangliu's version omits it), global average pool, fc."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        stages, planes = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(planes, width, stride), PreActBlock(width, width, 1)))
            planes = width
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "cw-mnist": cw_mnist,
    "cw-cifar": cw_cifar,
    "preact-resnet18": PreActResNet18,
}


# The distribution is "labelflip" (pyproject.toml); its extra `timm` pins a timm it was tested with.
TIMM_INSTALL = 'pip install "labelflip[timm]"'
MAX_CLOSE_MATCHES = 5


def build_net(arch: str, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The bare network `arch` names, with fresh random weights: a registry name (`ARCHITECTURES`),
    `torchvision:<name>` or `timm:<name>`."""
    zoo, sep, name = arch.partition(":")
    if sep and zoo == "torchvision":
        return _torchvision_net(name, in_channels, num_classes)
    if sep and zoo == "timm":
        return _timm_net(name, in_channels, num_classes)
    if arch not in ARCHITECTURES:
        # A bare zoo name ("resnet18") is a common slip: suggest it with its prefix.
        close = _close_matches(arch, {**{n: f"torchvision:{n}" for n in _torchvision_names()},
                                      **{a: a for a in ARCHITECTURES}})
        raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}, "
                          f"torchvision:<name> or timm:<name>{close}")
    return ARCHITECTURES[arch](in_channels, num_classes)


def normalized(net: nn.Module, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> Normalized:
    """`net` behind (x - mean) / std, once mean and std have one value or one per channel."""
    if len(mean) not in (1, in_channels) or len(std) not in (1, in_channels):
        raise ConfigError(f"mean/std need 1 or {in_channels} values, got {len(mean)} and {len(std)}")
    return Normalized(net, mean, std)


def build_model(arch: str, in_channels: int = 1, num_classes: int = 10,
                mean: Sequence[float] = PAPER_MEAN, std: Sequence[float] = PAPER_STD) -> Normalized:
    """The network `arch` names (see `build_net`) behind its normalisation."""
    return normalized(build_net(arch, in_channels, num_classes), in_channels, mean, std)


def _torchvision_names() -> list[str]:
    import torchvision

    # Only the classifiers: get_model also builds detection, segmentation and video models.
    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_net(name: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    names = _torchvision_names()
    if name not in names:
        raise ConfigError(f"unknown architecture 'torchvision:{name}': torchvision has no classifier of that name"
                          f"{_close_matches(name, {n: f'torchvision:{n}' for n in names})}")
    if in_channels != 3:
        # None of torchvision's classifiers has an input-channel option: their stems are built for RGB.
        raise ConfigError(f"architecture 'torchvision:{name}' takes 3-channel (RGB) images, but the dataset's have "
                          f"{in_channels}; timm:<name> builds its models for any channel count (in_chans)")
    with warnings.catch_warnings():
        # Inception and GoogLeNet announce a change of their random init; the user's weights replace it anyway.
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _timm_net(name: str, in_channels: int, num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"architecture 'timm:{name}' needs timm, which is not installed: "
                          f"{TIMM_INSTALL}") from None
    # is_model also refuses hf-hub:/local-dir: names, which would fetch a config from elsewhere.
    if not timm.is_model(name):
        raise ConfigError(f"unknown architecture 'timm:{name}': timm has no model of that name"
                          f"{_close_matches(name, {n: f'timm:{n}' for n in timm.list_models()})}")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        # Some timm models fix their input size or channel count and refuse others.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"timm cannot build 'timm:{name}' for {in_channels}-channel images and {num_classes} "
                          f"classes: {reason}") from None


def _close_matches(name: str, candidates: Mapping[str, str]) -> str:
    """"; close matches: a, b" naming the candidates (bare name -> arch) nearest `name`, case ignored; or ""."""
    by_key = {bare.lower(): arch for bare, arch in candidates.items()}
    found = difflib.get_close_matches(name.lower(), by_key, n=MAX_CLOSE_MATCHES)
    return f"; close matches: {', '.join(by_key[k] for k in found)}" if found else ""


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of each image (on the model's device, in true fp32), returned on the CPU."""
    return _reduced_logits(model, images, batch_size, lambda logits, rows: (logits.argmax(1),))[0]


def predict_with_ties(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, batch_size: int = 1000,
                      tolerance: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, ties): each image's predicted class and whether its logit for `classes` (one per image) is
    within `tolerance` of the top logit, relative to the logits' scale; on the CPU.

    A tie means the image sits on a decision boundary, where another batch shape (cuDNN picks its algorithm by
    shape) or another device may round the prediction either way: a check that compares predictions made apart
    accepts the tied class as well.
    """
    def reduce(logits: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        top = logits.max(1).values
        own = logits.gather(1, classes[rows].to(logits.device)[:, None]).squeeze(1)
        return logits.argmax(1), top - own <= tolerance * top.abs().clamp_min(1)

    return _reduced_logits(model, images, batch_size, reduce)


def logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's outputs for `images` in true fp32, on the CPU, batch by batch (halved where GPU memory runs out)."""
    return _reduced_logits(model, images, batch_size, lambda out, rows: (out,))[0]


def _reduced_logits(model: nn.Module, images: torch.Tensor, batch_size: int,
                    reduce: Callable[[torch.Tensor, slice], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """reduce(logits, rows) of each batch of images, in true fp32 and with the batch halved where GPU memory runs
    out, each of its outputs concatenated on the CPU."""
    device = next(model.parameters()).device

    def run(batch: int) -> tuple[torch.Tensor, ...]:
        with ieee_fp32(), torch.no_grad():
            parts = [tuple(t.cpu() for t in reduce(model(images[i:i + batch].to(device)).float(), slice(i, i + batch)))
                     for i in range(0, len(images), batch)]
            if not parts:  # no images: reduce's outputs, empty
                parts = [tuple(t.cpu() for t in reduce(torch.empty(0, 1, device=device), slice(0, 0)))]
        return tuple(torch.cat(outputs) for outputs in zip(*parts))

    return halving_on_oom(run, batch_size, "prediction")
