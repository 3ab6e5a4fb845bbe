"""Generated own-data sets in the formats users ship (ImageFolder of PNGs, .npz, datasets save_to_disk), and a small
model that classifies them: nearest-template, so that robustness depends on ε as for real classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SIDE = 8


def generated(num_classes: int, per_class: int, seed: int = 0, channels: int = 3) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """(templates float (K, H, W, C) in [0, 1], images uint8 (N, H, W, C), labels), classes interleaved."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.25, 0.75, size=(num_classes, SIDE, SIDE, channels))
    labels = np.tile(np.arange(num_classes), per_class)
    noisy = templates[labels] + rng.normal(0, 0.1, size=(len(labels), SIDE, SIDE, channels))
    return templates, np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8), labels


class NearestTemplate(nn.Module):
    """argmax_c of −‖x − t_c‖²/2, a linear layer. `catch_all` > 0 favours class 0 by that much: clean accuracy
    barely moves, but class 0 absorbs flips (the weakened model a gate must catch)."""

    def __init__(self, templates: np.ndarray, catch_all: float = 0.0) -> None:
        super().__init__()
        t = torch.tensor(templates, dtype=torch.float32).permute(0, 3, 1, 2).flatten(1)
        self.linear = nn.Linear(t.shape[1], len(t))
        with torch.no_grad():
            self.linear.weight.copy_(t)
            self.linear.bias.copy_(-(t * t).sum(1) / 2)
            self.linear.bias[0] += catch_all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def save_model(templates: np.ndarray, path: Path, catch_all: float = 0.0) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation
        torch.jit.save(torch.jit.script(NearestTemplate(templates, catch_all).eval()), str(path))
    return path


def class_names(num_classes: int) -> list[str]:
    return [f"c{i:04d}" for i in range(num_classes)]


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{i:06d}.png")
    return root


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray, names: list[str] | None = None) -> Path:
    extra = {} if names is None else {"class_names": np.array(names)}
    np.savez(path, x=images, y=labels, **extra)
    return path
