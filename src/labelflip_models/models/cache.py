"""Trained reference models: shipped with the package, or trained, cached on disk and shared between processes.

The reference models the baselines were made with ship in `reference_weights/<dataset>/<arch>.safetensors` with
their sidecar, so every machine and device gates the same weights (training differs between CPUs with and
without native bf16, and on GPUs); `scripts/ship-reference-weights` replaces them, together with the baselines.
Anything else (another architecture, seed or dataset file, `labelflip train --retrain`) is trained and cached.

A cache entry is `<key>.safetensors` plus a JSON sidecar that records the weights' sha256; the sidecar is
written last, so an entry without a matching sidecar is incomplete and gets retrained, never loaded.
A file lock makes exactly one process train while the others wait and then load.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..data import Dataset
from ..errors import StorageError
from ..provenance import machine, now_iso, versions
from ..storage.atomic import atomic_write_files, remove_stale_temps
from ..storage.cache_dir import CACHE_DIR_ENV, cache_root
from ..storage.locks import lock_timeout_error, lock_timeout_s
from .architectures import Normalized, build_model
from .train import Recipe, default_arch, recipe_for, train

FORMAT_VERSION = 2
SHIPPED_DIR = Path(__file__).parent / "reference_weights"


class CacheWarning(UserWarning):
    """A cache entry was unusable (corrupt, incomplete, or for something else) and is rebuilt."""


@dataclass
class TrainedModel:
    model: Normalized
    sidecar: dict[str, Any]
    weights_path: Path
    trained_now: bool

    @property
    def sha256(self) -> str:
        return self.sidecar["sha256"]

    @property
    def test_accuracy(self) -> float:
        return self.sidecar["test_accuracy"]


def serialize(model: torch.nn.Module) -> bytes:
    """The model's weights as safetensors bytes; deterministic, so their sha256 identifies the model."""
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def model_sha256(model: torch.nn.Module) -> str:
    return hashlib.sha256(serialize(model)).hexdigest()


# Recipe fields added after keys were first issued: hashed only where they leave their default, so every older
# recipe keeps its key, and with it its cached weights and the baselines that record their sha256.
LATER_FIELDS = {f.name: f.default for f in fields(Recipe) if f.name in ("augment", "optimizer")}


def cache_key(arch: str, recipe: Recipe, seed: int, dataset_fingerprint: str, precision: str,
              device_type: str = "cpu") -> str:
    """`precision` is what training actually ran in, which depends on the hardware as well as the recipe;
    `device_type` where it trained ("cpu", "cuda"): cuDNN's kernels and on-device crops train other weights than
    the CPU from the same seed. The CPU is hashed as no device, so CPU keys stay the keys issued before."""
    spec = asdict(recipe)
    # mean and std were hashed beside the recipe before they were part of it; they stay there.
    mean, std = spec.pop("mean"), spec.pop("std")
    for name, default in LATER_FIELDS.items():
        if spec[name] == default:
            del spec[name]
    spec = {"format": FORMAT_VERSION, "arch": arch, "recipe": spec, "precision": precision, "seed": seed,
            "dataset": dataset_fingerprint, "mean": mean, "std": std}
    if device_type != "cpu":
        spec["device"] = device_type
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _load_entry(weights: Path, sidecar_path: Path, key: str, model: Normalized) -> dict[str, Any] | None:
    """The sidecar if the entry is complete and intact, else None (after one warning line if it is damaged).

    Weights without a sidecar are what a writer killed between the two files leaves: no entry, no warning.
    """
    if not sidecar_path.exists():
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
        data = weights.read_bytes()
        problem = None
        if sidecar.get("key") != key:
            problem = f"sidecar is for key {sidecar.get('key')!r}"
        elif hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
            problem = "weights do not match the sha256 in the sidecar"
        else:
            model.load_state_dict(load_safetensors(data))
            return sidecar
    except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    warnings.warn(f"labelflip: cache entry {weights} is unusable ({problem}); ignoring it", CacheWarning,
                  stacklevel=3)
    return None


def _trained_entry(model: Normalized, data: Dataset, arch: str, recipe: Recipe, seed: int, device: str,
                   key: str, precision: str, progress: bool) -> tuple[bytes, dict[str, Any]]:
    start = time.perf_counter()
    acc = train(model, data, recipe, seed, progress)
    seconds = time.perf_counter() - start
    model.eval()
    blob = serialize(model)
    return blob, {
        "format": FORMAT_VERSION, "key": key, "arch": arch, "dataset": data.name,
        "dataset_fingerprint": data.fingerprint, "dataset_note": data.note,
        "recipe": asdict(recipe), "precision": precision, "seed": seed,
        "mean": list(recipe.mean), "std": list(recipe.std),
        "test_accuracy": acc, "train_seconds": round(seconds, 1), "device": device,
        "machine": machine(), "versions": versions(), "created": now_iso(),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }


def _store(weights: Path, sidecar_path: Path, blob: bytes, sidecar: dict[str, Any]) -> None:
    """Write the entry, sidecar last; on a full or read-only disk keep no half of it and warn (the caller still
    has the trained model, which is worth more to this run than the cache)."""
    try:
        atomic_write_files({weights: blob, sidecar_path: (json.dumps(sidecar, indent=2) + "\n").encode()})
    except StorageError as exc:
        warnings.warn(f"labelflip: trained model not cached: {exc}; this run uses it from memory, the next one "
                      "retrains", CacheWarning, stacklevel=3)


def shipped_paths(dataset: str, arch: str) -> tuple[Path, Path]:
    """Where the shipped reference weights of `arch` for a built-in `dataset` and their sidecar live."""
    return SHIPPED_DIR / dataset / f"{arch}.safetensors", SHIPPED_DIR / dataset / f"{arch}.json"


def _shipped(data: Dataset, arch: str, seed: int, device: str) -> TrainedModel | None:
    """The shipped weights, where they are what training with the default recipe would stand for: same
    architecture, seed and dataset files (fingerprint); None where there are none for these."""
    weights, sidecar_path = shipped_paths(data.name, arch)
    if data.own or not sidecar_path.exists():
        return None
    sidecar = json.loads(sidecar_path.read_text())
    if sidecar["seed"] != seed or sidecar["dataset_fingerprint"] != data.fingerprint:
        return None
    blob = weights.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sidecar["sha256"]:
        raise StorageError(f"the shipped reference weights {weights} do not match the sha256 in {sidecar_path.name}; "
                           "reinstall labelflip")
    model = build_model(arch, data.in_channels, data.num_classes, tuple(sidecar["mean"]), tuple(sidecar["std"]))
    model.load_state_dict(load_safetensors(blob))
    return TrainedModel(model.to(device).eval(), sidecar, weights, trained_now=False)


def load_or_train(data: Dataset, arch: str | None = None, seed: int = 0, device: str = "cpu",
                  recipe: Recipe | None = None, root: Path | None = None, progress: bool = False,
                  lock_timeout: float | None = None, shipped: bool = True) -> TrainedModel:
    """The shipped reference model where there is one for (data, arch, seed) and no `recipe` is given (unless
    `shipped` is False); else the cached model for (data, arch, recipe, seed, precision), trained first if no
    valid entry exists.

    `arch` defaults to the paper's network for the dataset, `recipe` to recipe_for(data.name, arch, device).

    Exactly one of several processes asking at once trains; the others wait on a file lock and load. The lock
    is an OS lock (flock), so a holder killed by SIGKILL releases it; a live holder is waited for up to
    `lock_timeout` (default: lock_timeout_s()). A cache dir that cannot be written is still read.
    """
    arch = arch or default_arch(data.name)
    if shipped and recipe is None and (found := _shipped(data, arch, seed, device)) is not None:
        return found
    recipe = recipe or recipe_for(data.name, arch, device)
    lock_timeout = lock_timeout_s() if lock_timeout is None else lock_timeout
    precision = "bf16" if recipe.uses_bf16(device) else "fp32"
    key = cache_key(arch, recipe, seed, data.fingerprint, precision, torch.device(device).type)
    directory = (root or cache_root()) / "models" / data.name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the model cache {directory} ({exc.strerror}); "
                           f"set ${CACHE_DIR_ENV} to a writable directory") from None
    weights, sidecar_path = directory / f"{arch}-{key}.safetensors", directory / f"{arch}-{key}.json"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights are part of what the seed fixes
        model = build_model(arch, data.in_channels, data.num_classes, recipe.mean, recipe.std)
    lock = FileLock(str(directory / f"{arch}-{key}.lock"), timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise lock_timeout_error(lock, "another process training the same model") from None
    except OSError as exc:
        # A read-only cache (e.g. a CI mount) cannot hold a lock, but its complete entries are safe to read.
        sidecar = _load_entry(weights, sidecar_path, key, model)
        if sidecar is not None:
            return TrainedModel(model.to(device).eval(), sidecar, weights, trained_now=False)
        raise StorageError(f"the model cache {directory} is not writable ({exc.strerror or exc}) and holds no "
                           f"valid {arch} model for {data.name}; set ${CACHE_DIR_ENV} to a writable "
                           "directory") from None
    try:
        for path in (weights, sidecar_path):
            remove_stale_temps(path)  # of a writer killed mid-write; we hold the lock, so none is in use
        sidecar = _load_entry(weights, sidecar_path, key, model)
        if sidecar is not None:
            return TrainedModel(model.to(device).eval(), sidecar, weights, trained_now=False)
        blob, sidecar = _trained_entry(model.to(device), data, arch, recipe, seed, device, key, precision, progress)
        _store(weights, sidecar_path, blob, sidecar)
        return TrainedModel(model, sidecar, weights, trained_now=True)
    finally:
        lock.release()
