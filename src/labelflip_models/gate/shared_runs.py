"""A gate case's attack run as the gate tests see it, and how runs are shared between pytest-xdist workers.

A run is computed once per session: the first worker to need it takes a file lock in the session's shared
temp dir, computes and stores it; the others wait for the lock and load it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save

from ..attacks import AttackResult
from ..storage.atomic import atomic_write_files, atomic_write_text
from ..storage.locks import lock_timeout_error, lock_timeout_s
from .baselines import ImageOutcomes
from .profiles import Case

T = TypeVar("T")
_TENSORS = ("images", "clipped", "labels", "adv_pred", "success", "attacked", "norms", "range", "clean_pred",
            "indices")


@dataclass
class CaseRun:
    case: Case
    result: dict[str, Any]
    # None for a run too large to keep them (AttackResult.reduced): its norms and range were measured before.
    images: torch.Tensor | None
    clipped: torch.Tensor | None
    labels: torch.Tensor
    adv_pred: torch.Tensor
    success: torch.Tensor
    attacked: torch.Tensor
    norms: torch.Tensor  # per image, in the attack's norm, as the run reported them
    range: torch.Tensor  # smallest and largest value of any adversarial
    # The model's prediction on each clean image: a fixed-ε attack "succeeds" on an image it never had to move.
    clean_pred: torch.Tensor
    # Each image's index in the dataset's test set, so that two runs' images pair up (gate/strength.py).
    indices: torch.Tensor

    @classmethod
    def from_attack(cls, case: Case, result: dict[str, Any], attacked: AttackResult,
                    indices: np.ndarray) -> CaseRun:
        """`indices`: the test images the run attacked, in its order (gate/cases.py, case_images)."""
        if len(indices) != len(attacked.labels):
            raise ValueError(f"{len(indices)} test indices for a run of {len(attacked.labels)} images")
        return cls(case, result, attacked.images, attacked.clipped, attacked.labels, attacked.adv_pred,
                   attacked.success, attacked.attacked, attacked.norms,
                   torch.tensor(attacked.adversarial_range, device="cpu"),
                   attacked.clean_pred, torch.as_tensor(np.asarray(indices, dtype=np.int64), device="cpu"))

    def outcomes(self) -> ImageOutcomes:
        """Each image's outcome, as a baseline stores it for paired decisions."""
        landed = torch.where(self.clean_pred != self.labels, self.clean_pred, self.adv_pred)
        norm = None
        if self.case.minimal:
            norm = torch.where(self.attacked, torch.where(self.success, self.norms, torch.inf), torch.nan)
            norm = norm.double().numpy()
        return ImageOutcomes(self.indices.numpy(), self.labels.numpy(), landed.numpy(), norm)

    def class_norms(self) -> dict[str, np.ndarray]:
        """Per class, the minimal norms of the images the attack had to move; a failed attack counts as inf."""
        norms = torch.where(self.success, self.norms, torch.inf).numpy()
        labels, attacked = self.labels.numpy(), self.attacked.numpy()
        return {name: norms[(labels == i) & attacked] for i, name in enumerate(self.result["class_names"])}


def save_run(run: CaseRun, directory: Path) -> None:
    """Tensors first, JSON last: the JSON marks a complete entry."""
    tensors = {name: getattr(run, name).contiguous() for name in _TENSORS if getattr(run, name) is not None}
    atomic_write_files({directory / "run.safetensors": save(tensors),
                        directory / "result.json": json.dumps(run.result).encode()})


def load_run(case: Case, directory: Path) -> CaseRun | None:
    if not (directory / "result.json").exists():
        return None
    tensors = dict.fromkeys(("images", "clipped")) | load_file(directory / "run.safetensors")
    return CaseRun(case, json.loads((directory / "result.json").read_text()), **tensors)


def save_json(value: dict[str, Any], directory: Path) -> None:
    atomic_write_text(directory / "result.json", json.dumps(value))


def load_json(directory: Path) -> dict[str, Any] | None:
    path = directory / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def computed_once(directory: Path | None, compute: Callable[[], T], save_to: Callable[[T, Path], None],
                  load_from: Callable[[Path], T | None]) -> T:
    """`compute()`, or, when `directory` is shared with other processes, whichever process's result came first."""
    if directory is None:
        return compute()
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / "lock"), timeout=lock_timeout_s())
    try:
        with lock:
            value = load_from(directory)
            if value is None:
                value = compute()
                save_to(value, directory)
    except Timeout:
        raise lock_timeout_error(lock, "another worker computing the same gate case") from None
    return value
