"""The gate's settings, parsed and validated once from pytest options and ini keys. Cheap to import (no torch)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .profiles import get_profile

DEFAULT_BASELINES = "fixtures/baselines"


@dataclass(frozen=True)
class GateConfig:
    profile: str
    device: str
    engine: str
    baselines: Path
    data_dir: str | None
    seed: int
    regen: bool
    require_data: bool
    datasets: tuple[str, ...]
    report: Path | None
    uncapped: bool
    # Bring your own model: None gates labelflip's reference models.
    model: Path | None
    arch: str | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    bounds: tuple[float, float]
    class_names: tuple[str, ...] | None
    trust_pickle: bool
    # "warn" or "error" when a baseline was recorded with another model (by weights sha256) than the one gated.
    model_mismatch: str = "warn"


MODEL_MISMATCH = ("warn", "error")


def gate_option_names(message: str) -> str:
    """model_io's messages name the CLI's options; in pytest the same options carry the --labelflip- prefix."""
    return re.sub(r"(?<![\w-])--(arch|trust-pickle|mean|std|bounds|class-names)\b", r"--labelflip-\1", message)


def parse_gate_config(setting: Callable[[str], str], flag: Callable[[str], bool], rootpath: Path) -> GateConfig:
    """`setting(ini_key)` gives an option's value (command line over ini file), `flag(dest)` a switch's."""
    from .data import CLASS_NAMES, DATASETS

    profile = get_profile(setting("labelflip_profile"))
    seed = setting("labelflip_seed")
    if not str(seed).lstrip("-").isdigit():
        raise ConfigError(f"--labelflip-seed must be an integer, got {seed!r}")
    device = setting("labelflip_device")
    if device not in ("auto", "cpu"):  # only these need no torch import to validate
        from .devices import resolve_device

        resolve_device(device)
    engine = setting("labelflip_engine")
    if engine != "auto":
        from .attacks.engine import ENGINES

        if engine not in ENGINES:
            raise ConfigError(f"--labelflip-engine: unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    baselines_text = setting("labelflip_baselines")
    baselines = Path(baselines_text)
    dataset = setting("labelflip_dataset") or None
    if dataset is not None and dataset not in DATASETS:
        raise ConfigError(f"--labelflip-dataset: unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    datasets = (dataset,) if dataset else profile.datasets
    model = Path(setting("labelflip_model")) if setting("labelflip_model") else None
    arch, mean_text, std_text = (setting(k) or None for k in ("labelflip_arch", "labelflip_mean", "labelflip_std"))
    bounds_text, names_text = setting("labelflip_bounds"), setting("labelflip_class_names")
    mean = std = class_names = None
    bounds = (0.0, 1.0)
    if model is not None or mean_text or std_text or names_text or bounds_text != "0,1":
        from .model_io import parse_bounds, parse_channel_values, parse_class_names

        if names_text and len(datasets) != 1:
            raise ConfigError("--labelflip-class-names needs --labelflip-dataset (names belong to one dataset)")
        try:
            mean = parse_channel_values(mean_text, "--mean") if mean_text else None
            std = parse_channel_values(std_text, "--std") if std_text else None
            bounds = parse_bounds(bounds_text)
            class_names = parse_class_names(names_text, len(CLASS_NAMES[datasets[0]])) if names_text else None
        except ConfigError as exc:
            raise ConfigError(gate_option_names(str(exc))) from None
    if model is not None:
        if not model.is_file():
            raise ConfigError(f"--labelflip-model: no model file at {model}")
        if dataset is None:
            raise ConfigError("--labelflip-model needs --labelflip-dataset: the dataset your model classifies")
        if baselines_text == DEFAULT_BASELINES:
            raise ConfigError("--labelflip-model needs --labelflip-baselines DIR: your model is gated against its own "
                              "baselines (create them once with --labelflip-regen), not labelflip's reference models'")
    elif arch or mean or std:
        raise ConfigError("--labelflip-arch/--labelflip-mean/--labelflip-std describe a --labelflip-model; none given")
    report = setting("labelflip_report")
    model_mismatch = setting("labelflip_model_mismatch")
    if model_mismatch not in MODEL_MISMATCH:
        raise ConfigError(f"--labelflip-model-mismatch: expected one of {', '.join(MODEL_MISMATCH)}, "
                          f"got {model_mismatch!r}")
    return GateConfig(
        profile=profile.name, device=device, engine=engine,
        baselines=baselines if baselines.is_absolute() else Path(rootpath) / baselines,
        data_dir=setting("labelflip_data_dir") or None, seed=int(seed),
        regen=flag("labelflip_regen"), require_data=flag("labelflip_require_data"),
        datasets=datasets, report=Path(report).absolute() if report else None, uncapped=flag("labelflip_uncapped"),
        model=model.absolute() if model else None, arch=arch, mean=mean, std=std, bounds=bounds,
        class_names=class_names, trust_pickle=flag("labelflip_trust_pickle"), model_mismatch=model_mismatch,
    )
