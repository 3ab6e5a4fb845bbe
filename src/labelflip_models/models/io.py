"""Bring-your-own-model: load a user's model file safely, and check that it fits the dataset.

Formats are recognised by content, never by extension. Nothing that can execute code from the file is
run unless the user says they trust it: TorchScript runs only TorchScript, safetensors and state dicts
(torch.load with weights_only=True) only hold tensors, and a pickled whole module needs trust_pickle.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file
from torch import nn

from ..errors import ConfigError
from .architectures import ARCHITECTURES, Normalized, build_model

ACCEPTED = ("accepted formats: a TorchScript archive (torch.jit.save), a safetensors state dict, "
            "a torch.save'd state dict (both with `arch`), or a torch.save'd whole model (with `trust_pickle`)")
# A state dict saved by a training script is often wrapped together with optimizer state, epochs etc.
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
# safetensors itself refuses headers above 100 MB; anything bigger is not a safetensors file.
MAX_SAFETENSORS_HEADER = 100_000_000
MAX_LISTED_KEYS = 5
TORCHSCRIPT_HEADER = "The following operation failed in the TorchScript interpreter."


class ModelWarning(UserWarning):
    """A user model needed fixing up (e.g. it was in training mode) or an option did not apply to it."""


class _NeedsTrust(Exception):
    """torch.load(weights_only=True) refused the file: unpickling it would run code the file names."""

    def __init__(self, culprit: str | None) -> None:
        super().__init__(culprit)
        self.culprit = culprit


def parse_channel_values(text: str, what: str) -> tuple[float, ...]:
    """"0.5" or "0.485,0.456,0.406" as floats; `what` names the parameter in errors. Only parses: load_model checks
    counts and that std > 0."""
    if not text.strip():
        raise ConfigError(f"`{what}`: expected one number or comma-separated numbers, got an empty value")
    values = []
    for item in (item.strip() for item in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"`{what}`: {item!r} is not a number (in {text!r})") from None
        if not math.isfinite(value):
            raise ConfigError(f"`{what}`: values must be finite, got {item!r}")
        values.append(value)
    return tuple(values)


def parse_bounds(text: str) -> tuple[float, float]:
    """"lower,upper" of the model's pixel range, e.g. "0,1" or "0,255"."""
    values = parse_channel_values(text, "bounds")
    if len(values) != 2:
        raise ConfigError(f"`bounds`: expected two numbers 'lower,upper' (e.g. 0,1 or 0,255), got {text!r}")
    lower, upper = values
    if lower >= upper:
        raise ConfigError(f"`bounds`: lower must be below upper, got {text!r}")
    return lower, upper


def parse_class_names(text: str, num_classes: int) -> tuple[str, ...]:
    """Comma-separated names, or "@path" to a file with one name per line (for names containing commas)."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"`class_names`: cannot read {path} ({_first_line(exc)})") from None
        while lines and not lines[-1]:
            lines.pop()  # a trailing newline is not a class
        names, where = lines, f"in {path}, line"
    else:
        names, where = [name.strip() for name in text.split(",")], "at position"
    empty = [i + 1 for i, name in enumerate(names) if not name]
    if empty:
        raise ConfigError(f"`class_names`: empty name {where} {empty[0]}")
    if len(names) != num_classes:
        raise ConfigError(f"`class_names`: got {len(names)} names, but the model has {num_classes} classes")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"`class_names`: duplicate names: {', '.join(map(repr, duplicates))}")
    return tuple(names)


def model_format(path: str | Path) -> str:
    """"torchscript", "safetensors", "state_dict" or "pickle" (a whole pickled module), judged by content.

    Telling a state dict from a pickled module takes a weights-only load, which is safe but reads the file.
    """
    path = Path(path)
    kind = _sniff(path)
    if kind != "torch":
        return kind
    try:
        _torch_load_weights_only(path)
    except _NeedsTrust:
        return "pickle"
    return "state_dict"


def load_model(path: str | Path, *, arch: str | None = None, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None, trust_pickle: bool = False, in_channels: int = 1,
               num_classes: int = 10) -> nn.Module:
    """The model in `path`, on the CPU, in eval mode, taking pixels (normalisation is inside it).

    mean/std default to no normalisation for user models, except that a state dict of our Normalized
    wrapper brings its own.
    """
    path = Path(path)
    _check_normalisation(mean, std, in_channels)
    kind = _sniff(path)
    if kind == "torchscript":
        return _finish_module(_load_torchscript(path), path, arch, mean, std)
    if kind == "safetensors":
        try:
            state = load_safetensors_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read safetensors file {path}: {_first_line(exc)}") from None
        return _from_state_dict(state, path, arch, mean, std, in_channels, num_classes)
    try:
        loaded = _torch_load_weights_only(path)
    except _NeedsTrust as refusal:
        if not trust_pickle:
            names = f" (it names {refusal.culprit})" if refusal.culprit else ""
            raise ConfigError(
                f"{path} is a pickled Python object{names}, e.g. torch.save(model) of a whole model. Loading it "
                "executes arbitrary code from the file, so labelflip refuses by default. Re-run with "
                "`trust_pickle` only if you trust its source, or export the model with torch.jit.save "
                "(or save its state_dict and pass `arch`).") from None
        loaded = _unpickle_trusted(path)
    if isinstance(loaded, nn.Module):
        return _finish_module(loaded, path, arch, mean, std)
    return _from_state_dict(_state_dict_of(loaded, path), path, arch, mean, std, in_channels, num_classes)


def check_model(model: nn.Module, sample: torch.Tensor, num_classes: int) -> None:
    """One forward pass on a small pixel-space batch (N, C, H, W): fail now, clearly, not mid-attack."""
    _ensure_eval(model, "the model")
    param = next(model.parameters(), None)
    shape = tuple(sample.shape)
    try:
        with torch.no_grad():
            out = model(sample if param is None else sample.to(param.device))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ConfigError(f"model rejected input of shape {shape} (the dataset's images, in pixel space): "
                          f"{_first_line(exc)}") from None
    expected = (shape[0], num_classes)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model returned {type(out).__name__}, expected a tensor of logits of shape {expected}")
    if out.dim() != 2 or out.shape[0] != shape[0]:
        raise ConfigError(f"model returned logits of shape {tuple(out.shape)}, expected {expected} "
                          f"(one row of {num_classes} class scores per image)")
    if out.shape[1] != num_classes:
        raise ConfigError(f"model outputs {out.shape[1]} classes, but the dataset has {num_classes} "
                          f"(got logits of shape {tuple(out.shape)}, expected {expected})")
    if not out.is_floating_point():
        raise ConfigError(f"model returned {out.dtype} outputs; attacks need floating-point logits")
    bad_rows = int((~torch.isfinite(out)).any(1).sum())
    if bad_rows:
        raise ConfigError(f"model returned non-finite logits (NaN/inf) for {bad_rows} of {shape[0]} rows "
                          f"of a sample of shape {shape}")


def _sniff(path: Path) -> str:
    """"torchscript", "safetensors" or "torch" (torch.save, zip or legacy pickle), else ConfigError."""
    if not path.exists():
        raise ConfigError(f"model file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"model path {path} is a directory, not a model file; {ACCEPTED}")
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if _is_safetensors(f, head, path.stat().st_size):
                return "safetensors"
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path} ({exc.strerror})") from None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise ConfigError(f"{path} is a damaged zip archive (truncated download?); {ACCEPTED}") from None
        # Both torch.save and torch.jit.save write "<name>/data.pkl"; only TorchScript ships code.
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        if any(name.endswith("/data.pkl") for name in names):
            return "torch"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # torch.save(..., _use_new_zipfile_serialization=False): a bare pickle stream
    what = "an empty file" if not head else "not a model file"
    raise ConfigError(f"{path} is {what}; {ACCEPTED}")


def _is_safetensors(f: BinaryIO, head: bytes, size: int) -> bool:
    """safetensors = little-endian u64 header length, then that many bytes of JSON object."""
    if len(head) < 8:
        return False
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(size - 8, MAX_SAFETENSORS_HEADER):
        return False
    header = f.read(length)
    if not header.startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:
        return False


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream, but the user chose the format; that is not theirs to fix here.
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ConfigError(f"cannot load TorchScript archive {path}: {_first_line(exc)}") from None


def _torch_load_weights_only(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise _NeedsTrust(found.group(1) if found else None) from None
    except (RuntimeError, ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"cannot read {path} as a torch.save file (corrupt?): {_first_line(exc)}") from None


def _unpickle_trusted(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ConfigError(f"cannot unpickle {path}: {_first_line(exc)}. A pickled model needs its class "
                          "importable under the same module path as when it was saved; exporting it with "
                          "torch.jit.save avoids that") from None
    except Exception as exc:  # unpickling runs the file's own code, which may raise anything
        raise ConfigError(f"cannot unpickle {path}: {type(exc).__name__}: {_first_line(exc)}") from None


def _state_dict_of(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
        if loaded and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
            return loaded
        keys = ", ".join(map(repr, list(loaded)[:MAX_LISTED_KEYS]))
        raise ConfigError(f"{path} holds a dict that is not a state dict (keys: {keys or 'none'}); expected "
                          f"parameter names mapped to tensors, possibly under {' or '.join(STATE_DICT_KEYS)}")
    raise ConfigError(f"{path} holds a {type(loaded).__name__}, not a state dict or a model; {ACCEPTED}")


def _from_state_dict(state: Mapping[str, torch.Tensor], path: Path, arch: str | None,
                     mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                     in_channels: int, num_classes: int) -> Normalized:
    if arch is None:
        raise ConfigError(f"{path} holds only weights (a state dict); pass `arch` to say which architecture "
                          f"they belong to (one of: {', '.join(ARCHITECTURES)})")
    bare = build_model(arch, in_channels, num_classes).net.state_dict()
    # Our Normalized wrapper stores the net under "net." plus its own mean/std, which then apply by default.
    wrapped = set(state) != set(bare) and any(k.startswith("net.") for k in state)
    if wrapped:
        if mean is None and "mean" in state:
            mean = tuple(state["mean"].flatten().tolist())
        if std is None and "std" in state:
            std = tuple(state["std"].flatten().tolist())
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")} | {
            k: v for k, v in state.items() if not k.startswith("net.") and k not in ("mean", "std")}
    # build_model and Normalized check the checkpoint's own mean/std (the user's were checked up front).
    model = build_model(arch, in_channels, num_classes, mean or (0.0,), std or (1.0,))
    _check_keys(state, model.net.state_dict(), path, arch)
    model.net.load_state_dict(state)
    return model.eval()


def _check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path,
                arch: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:MAX_LISTED_KEYS])}"
                + (", ..." if len(keys) > MAX_LISTED_KEYS else "")
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches, file vs arch", mismatched)) if keys]
    if problems:
        raise ConfigError(f"the weights in {path} do not fit `arch` {arch}: {'; '.join(problems)}")


def _finish_module(module: nn.Module, path: Path, arch: str | None, mean: tuple[float, ...] | None,
                   std: tuple[float, ...] | None) -> nn.Module:
    if arch is not None:
        warnings.warn(f"labelflip: architecture {arch!r} is ignored: {path} holds a whole model with its own "
                      "architecture", ModelWarning, stacklevel=3)
    _ensure_eval(module, str(path))
    if mean is None and std is None:
        return module
    return Normalized(module, mean or (0.0,), std or (1.0,)).eval()


def _ensure_eval(model: nn.Module, name: str) -> None:
    if any(m.training for m in model.modules()):
        warnings.warn(f"labelflip: {name} was in training mode, where dropout/batch-norm would make attacks "
                      "nondeterministic; labelflip switched it to eval mode", ModelWarning, stacklevel=3)
        model.eval()


def _check_normalisation(mean: tuple[float, ...] | None, std: tuple[float, ...] | None, in_channels: int) -> None:
    for what, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if len(values) not in (1, in_channels):
            raise ConfigError(f"`{what}` needs {_channel_counts(in_channels)}, got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"`{what}` values must be finite, got {tuple(values)}")
    if std is not None and any(v <= 0 for v in std):
        raise ConfigError(f"`std` values must be positive, got {tuple(std)}")


def _channel_counts(in_channels: int) -> str:
    if in_channels == 1:
        return "1 value (the dataset's images have 1 channel)"
    return f"1 value or {in_channels} (one per channel of the dataset's images)"


def _first_line(exc: BaseException) -> str:
    """The line that says what went wrong; TorchScript puts it last, after its own traceback."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1].strip() if lines[0].startswith(TORCHSCRIPT_HEADER) else lines[0]
