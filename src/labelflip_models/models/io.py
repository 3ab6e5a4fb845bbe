"""Bring-your-own-model: load a user's model file safely, and check that it fits the dataset.

Formats are recognised by content, never by extension: a torch.export archive (torch.export.save, a zip with
`archive_format` "pt2"), a TorchScript archive (torch.jit.save), a safetensors state dict, a torch.save'd state
dict, or a torch.save'd whole module. A state dict needs `arch` (see `architectures.build_net`: a registry name,
`torchvision:<name>` or `timm:<name>`). Nothing that can execute code from the file is run unless the user says they
trust it: TorchScript runs only TorchScript, a torch.export archive is loaded with every torch.load inside it
weights-only (one holding other pickled objects needs trust_pickle), safetensors and state dicts (torch.load with
weights_only=True) only hold tensors, and a pickled whole module needs trust_pickle.

The logits of a model's output (`logits_of`): a tensor is the logits; else an object with a tensor attribute
`logits` (e.g. a Hugging Face ModelOutput) gives that; else a Mapping gives its "logits" key; else a tuple or list
gives its first element, which must be a tensor. `logits_adapter` wraps a model whose output needs this in
`LogitsOutput`, one whose outputs look like softmax probabilities in `LogOfProbabilities` (with a warning), and
leaves one that returns logits as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file
from torch import nn

from ..errors import ConfigError
from .architectures import ARCHITECTURES, Normalized, build_net, normalized

ACCEPTED = ("accepted formats: a torch.export archive (torch.export.save, .pt2), a TorchScript archive "
            "(torch.jit.save), a safetensors state dict, a torch.save'd state dict (both with `arch`), or a "
            "torch.save'd whole model (with `trust_pickle`)")
ARCH_CHOICES = f"{', '.join(ARCHITECTURES)}, torchvision:<name> or timm:<name>"
# A state dict saved by a training script is often wrapped together with optimizer state, epochs etc.
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
# safetensors itself refuses headers above 100 MB; anything bigger is not a safetensors file.
MAX_SAFETENSORS_HEADER = 100_000_000
MAX_LISTED_KEYS = 5
TORCHSCRIPT_HEADER = "The following operation failed in the TorchScript interpreter."
# torch.export.save writes "<root>/archive_format" holding this; TorchScript and torch.save archives have no such file.
PT2_FORMAT = b"pt2"
# torch.export.load runs every torch.load inside it weights-only while this is set (torch.load reads it per call).
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
# Constants torch.export.load restores with plain pickle.loads, which no weights-only setting reaches.
PT2_OPAQUE_PREFIX = "opaque_obj_"
# torch.export.load logs the real cause of a failure (with a traceback) under these, then raises a generic error.
EXPORT_LOGGERS = ("torch.export", "torch._export")
# torch.export.save writes the program itself as "<root>/models/<name>.json"; an AOTInductor package need not.
PT2_PROGRAM = re.compile(r"[^/]+/models/[^/]+\.json")
# Rows summing to 1 within this are a softmax's (float32 rounding over K classes stays far below it).
PROBABILITY_SUM_TOLERANCE = 1e-3
SOFTMAX, UNIT_VALUES = "every row non-negative and summing to 1", "every value in [0, 1]"
LOGITS_RULE = ("labelflip takes the logits from a tensor output, from an output's tensor attribute `logits`, from "
               "a mapping's 'logits' key, or from the first element of a tuple or list")


class ModelWarning(UserWarning):
    """A user model needed fixing up (e.g. it was in training mode) or an option did not apply to it."""


class ExportedModule(nn.Module):
    """The module of a torch.export program. Its train/eval behaviour was fixed when it was exported (load_model
    refuses one exported in training mode), and the module refuses train()/eval(); here they only set the flags
    that callers such as `check_model` and the attacks read, so the usual calls work on it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.train(False)

    def train(self, mode: bool = True) -> ExportedModule:
        for m in self.modules():
            m.training = mode
        return self

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.module(*args, **kwargs)


class LogitsOutput(nn.Module):
    """`model` with its output reduced to the logits tensor (`logits_of`), for a model that returns a tuple, a
    mapping or an object such as a Hugging Face ModelOutput."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


class LogOfProbabilities(nn.Module):
    """`model` returning the log of its outputs, for a model that returns softmax probabilities: the attacks'
    losses take logits, and the log keeps every prediction (it is monotone) and gives the logits' cross-entropy."""

    def __init__(self, model: nn.Module, kind: str = SOFTMAX) -> None:
        super().__init__()
        self.model, self.kind = model, kind
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model(x)
        # A probability that underflowed to 0 would give -inf and NaN gradients; the smallest normal number keeps
        # the log finite (its gradient there is zero, which the gradients check counts).
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def probability_kind(outputs: object) -> str | None:
    """What makes `outputs` (N, K) look like probabilities rather than logits, or None (also for anything but a
    2-D floating-point tensor, which check_model refuses): SOFTMAX, every row non-negative and summing to 1; or
    UNIT_VALUES, every value in [0, 1] (e.g. a sigmoid)."""
    if not (isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and outputs.is_floating_point()
            and len(outputs) and bool(((outputs >= 0) & (outputs <= 1)).all())):
        return None
    if bool(((outputs.sum(1) - 1).abs() < PROBABILITY_SUM_TOLERANCE).all()):
        return SOFTMAX
    return UNIT_VALUES


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
    """"pt2" (torch.export), "torchscript", "safetensors", "state_dict" or "pickle" (a whole pickled module), judged
    by content.

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
    wrapper brings its own. A torch.export program comes wrapped in `ExportedModule`.
    """
    path = Path(path)
    _check_normalisation(mean, std, in_channels)
    kind = _sniff(path)
    if kind == "pt2":
        return _finish_module(_load_exported(path, trust_pickle), path, arch, mean, std)
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


def logits_of(output: object) -> torch.Tensor:
    """The logits in a model's output, by the rule in the module docstring; ConfigError where it finds none."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    kind = type(output).__name__
    if isinstance(output, Mapping):
        if "logits" not in output:
            keys = ", ".join(map(repr, list(output)[:MAX_LISTED_KEYS])) + (", ..." if len(output) > MAX_LISTED_KEYS
                                                                           else "")
            raise ConfigError(f"model returned a {kind} without a 'logits' key (keys: {keys or 'none'}); "
                              f"{LOGITS_RULE}")
        if not isinstance(output["logits"], torch.Tensor):
            raise ConfigError(f"model returned a {kind} whose 'logits' is a {type(output['logits']).__name__}, "
                              "not a tensor")
        return output["logits"]
    if isinstance(output, (tuple, list)):
        if not output:
            raise ConfigError(f"model returned an empty {kind}; {LOGITS_RULE}")
        if not isinstance(output[0], torch.Tensor):
            raise ConfigError(f"model returned a {kind} whose first element is a {type(output[0]).__name__}, not "
                              f"a tensor of logits; {LOGITS_RULE}")
        return output[0]
    raise ConfigError(f"model returned {kind}, expected a tensor of logits; {LOGITS_RULE}")


def logits_adapter(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """`model` itself when one forward pass on `sample` (N, C, H, W pixels) returns a tensor of logits, so that
    nothing about an ordinary model changes (its type, its weights' sha256); else `model` in `LogitsOutput`, once
    `logits_of` has found the logits in its output (ConfigError now where it finds none, not mid-attack); and in
    `LogOfProbabilities`, with a ModelWarning, when those look like softmax probabilities (`probability_kind`)."""
    _ensure_eval(model, "the model")
    out = _forward(model, sample)
    adapted = model if isinstance(out, torch.Tensor) else LogitsOutput(model).eval()
    # Only a softmax: values that merely lie in [0, 1] on a few images may be logits, whose log would tie every
    # negative one on other images; the logits check warns about those instead.
    if probability_kind(logits_of(out)) != SOFTMAX:
        return adapted
    warnings.warn(f"labelflip: the model's outputs look like probabilities ({SOFTMAX} on {len(sample)} images), "
                  "not logits; labelflip attacks their log. A saturated softmax still hides gradients: return the "
                  "logits (drop the final softmax) to be sure", ModelWarning, stacklevel=3)
    return LogOfProbabilities(adapted)


def check_model(model: nn.Module, sample: torch.Tensor, num_classes: int) -> None:
    """One forward pass on a small pixel-space batch (N, C, H, W): fail now, clearly, not mid-attack."""
    _ensure_eval(model, "the model")
    shape = tuple(sample.shape)
    out = _forward(model, sample)
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


def _forward(model: nn.Module, sample: torch.Tensor) -> object:
    param = next(model.parameters(), None)
    try:
        with torch.no_grad():
            return model(sample if param is None else sample.to(param.device))
    # A torch.export program checks its input shapes with assertions ("Guard failed: x.size()[2] == 28").
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        raise ConfigError(f"model rejected input of shape {tuple(sample.shape)} (the dataset's images, in pixel "
                          f"space): {_first_line(exc)}") from None


def _sniff(path: Path) -> str:
    """"pt2", "torchscript", "safetensors" or "torch" (torch.save, zip or legacy pickle), else ConfigError."""
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
                infos = archive.infolist()
                # The file starts with a member, so its own directory lists one at offset 0. A directory that does
                # not was found inside a stored member (a .pt2 stores torch.save files): the file's was cut off.
                if not any(info.header_offset == 0 for info in infos):
                    raise zipfile.BadZipFile
                names = [info.filename for info in infos]
                if any(name.count("/") == 1 and name.endswith("/archive_format")
                       and archive.read(name).strip() == PT2_FORMAT for name in names):
                    return "pt2"
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


def _load_exported(path: Path, trust_pickle: bool) -> ExportedModule:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any(PT2_PROGRAM.fullmatch(name) for name in names):
        raise ConfigError(f"{path} is a PT2 archive without an exported program (an AOTInductor package?); save "
                          "the model with torch.export.save(torch.export.export(model, ...), path)")
    opaque = [name for name in names if name.rpartition("/")[2].startswith(PT2_OPAQUE_PREFIX)]
    if opaque and not trust_pickle:
        raise _pt2_needs_trust(path, f" (e.g. {opaque[0]})")
    try:
        with _export_load(trust_pickle) as records:
            program = torch.export.load(path)
            module = program.module()
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise _pt2_needs_trust(path, f" (it names {found.group(1)})" if found else "") from None
    except Exception as exc:  # deserialising a damaged program can fail anywhere in torch's code
        # torch.export.load logs the RuntimeError that stopped it, then raises a generic one; other records with
        # an exception (a weights-only load it retried with trust) are not the cause.
        logged = [r.exc_info[1] for r in records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
        cause = logged[-1] if logged else exc
        raise ConfigError(f"cannot load torch.export archive {path} (damaged, or saved by an incompatible "
                          f"torch?): {_first_line(cause)}") from None
    training = _training_ops(module)
    if training:
        raise ConfigError(f"{path} was exported in training mode (its graph runs {', '.join(training)} in training "
                          "mode), which would make attacks nondeterministic, and an exported graph cannot be "
                          "switched to eval mode: call model.eval() before torch.export.export")
    shape = _fixed_batch_shape(program)
    if shape is not None:
        raise ConfigError(f"{path} was exported for a fixed batch of {shape[0]} (input shape {shape}); labelflip "
                          "runs batches of any size: export with a dynamic batch dimension, e.g. "
                          "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))")
    return ExportedModule(module)


def _pt2_needs_trust(path: Path, names: str) -> ConfigError:
    return ConfigError(f"{path} is a torch.export archive holding pickled Python objects{names}. Loading it "
                       "executes arbitrary code from the file, so labelflip refuses by default. Re-run with "
                       "`trust_pickle` only if you trust its source.")


@contextlib.contextmanager
def _export_load(trust_pickle: bool) -> Iterator[list[logging.LogRecord]]:
    """Around torch.export.load: its log records collected rather than printed (it logs a failure's cause with a
    traceback, then raises a generic error), and unless `trust_pickle`, every torch.load inside it weights-only."""
    collect = _Collect()
    # torch gives many of its module loggers their own handler, so each is redirected, not just the two roots.
    names = {*EXPORT_LOGGERS, *(name for name in logging.Logger.manager.loggerDict
                                if any(name.startswith(f"{root}.") for root in EXPORT_LOGGERS))}
    loggers = [logging.getLogger(name) for name in sorted(names)]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    saved_env = {key: os.environ.get(key) for key in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    for logger in loggers:
        logger.handlers, logger.propagate = [collect], False
    if not trust_pickle:
        os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)  # torch refuses both settings at once
        os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield collect.records
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _training_ops(module: nn.Module) -> list[str]:
    """The ops of an exported graph (and its subgraphs) called with a `train`/`training` argument that is True:
    dropout, batch norm and the like as they run in training mode."""
    found = set()
    for graph_module in module.modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        for node in graph_module.graph.nodes:
            schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
            for i, arg in enumerate(schema.arguments if schema is not None else ()):
                if arg.name in ("train", "training"):
                    value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
                    if value is True:
                        found.add(str(node.target))
    return sorted(found)


def _fixed_batch_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """The input shape of a program exported for one batch size (a concrete first dimension), else None."""
    user_inputs = set(program.graph_signature.user_inputs)
    first = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs), None)
    value = None if first is None else first.meta.get("val")
    if isinstance(value, torch.Tensor) and value.dim() and isinstance(value.shape[0], int):
        return tuple(value.shape)
    return None


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
                          f"they belong to (one of: {ARCH_CHOICES})")
    # Built once: a zoo architecture can take seconds to build.
    net = build_net(arch, in_channels, num_classes)
    bare = net.state_dict()
    # Our Normalized wrapper stores the net under "net." plus its own mean/std, which then apply by default.
    wrapped = set(state) != set(bare) and any(k.startswith("net.") for k in state)
    if wrapped:
        if mean is None and "mean" in state:
            mean = tuple(state["mean"].flatten().tolist())
        if std is None and "std" in state:
            std = tuple(state["std"].flatten().tolist())
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")} | {
            k: v for k, v in state.items() if not k.startswith("net.") and k not in ("mean", "std")}
    # normalized and Normalized check the checkpoint's own mean/std (the user's were checked up front).
    model = normalized(net, in_channels, mean or (0.0,), std or (1.0,))
    _check_keys(state, bare, path, arch)
    net.load_state_dict(state)
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
