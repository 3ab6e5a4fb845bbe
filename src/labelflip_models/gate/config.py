"""The gate's settings, parsed and validated once from pytest options and ini keys. Cheap to import (no torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, LabelflipError
from .margins import Margins
from .profiles import PROFILES, Case, cases, get_profile

# The reference models' baselines ship inside the package (package data).
REFERENCE_BASELINES = Path(__file__).with_name("reference_baselines")


def in_source_checkout(path: Path) -> bool:
    """Whether the reference baselines at `path` are a checkout's files (src/labelflip_models/gate/...), which
    --labelflip-regen may rewrite, rather than an installed copy, which it must not."""
    return (path.parents[3] / "pyproject.toml").is_file() and path.parents[2].name == "src"
# Under --labelflip-report DIR, each computed run also lands in DIR/gate-runs/<case id>/ for the session's report;
# the controller empties that folder (and only it) when a session starts.
RUNS_DIR = "gate-runs"
# Up to this many classes, per-class checks are one test item per class; above it, one per case that lists the
# failing classes (1,000 items per case would bury the report).
PER_CLASS_ITEMS = 100

OPTIONS = [
    # (name, ini key, default, help)
    ("profile", "labelflip_profile", "smoke", f"gate profile: {', '.join(PROFILES)}"),
    ("device", "labelflip_device", "auto", "torch device for models and attacks: auto, cpu, cuda, cuda:N"),
    ("engine", "labelflip_engine", "auto", "engine of the attacks: auto (native kernels, bf16 where the hardware "
                                           "has it; minimal attacks in fp32), reference (Foolbox or pyautoattack), "
                                           "native, native-fp32"),
    ("baselines", "labelflip_baselines", "", "baseline directory, relative to rootdir (default: the reference "
                                             "models' baselines installed with labelflip)"),
    ("data-dir", "labelflip_data_dir", "", "dataset directory (default: $LABELFLIP_DATA_DIR)"),
    ("seed", "labelflip_seed", "0", "training and attack seed"),
    ("dataset", "labelflip_dataset", "", "run only this dataset's cases (required with --labelflip-model): a built-in "
                                         "name, or the path of your own test set (ImageFolder tree, .npz, datasets "
                                         "save_to_disk folder)"),
    ("resize", "labelflip_resize", "", "your own data: resize each image's shorter side to N pixels"),
    ("center-crop", "labelflip_center_crop", "", "your own data: then crop the centred NxN square"),
    ("report", "labelflip_report", "", "write heatmaps, trend plots, summary.md, report.html, report.json here"),
    ("model", "labelflip_model", "", "gate YOUR model: a TorchScript file, or a state_dict/safetensors file with "
                                     "--labelflip-arch; needs --labelflip-dataset and --labelflip-baselines"),
    ("arch", "labelflip_arch", "", "architecture (registry name) of a state-dict --labelflip-model"),
    ("mean", "labelflip_mean", "", "normalisation mean the model expects: one value or one per channel"),
    ("std", "labelflip_std", "", "normalisation std the model expects: one value or one per channel"),
    ("bounds", "labelflip_bounds", "0,1", "LO,HI pixel range of the model's input; ε is a fraction of HI-LO"),
    ("class-names", "labelflip_class_names", "", "comma-separated class names, or @FILE with one per line"),
    ("runs", "labelflip_runs", "", "gate the runs `labelflip run` computed into this directory: cases found there "
                                   "run no attack; missing ones are computed in the session"),
    ("model-mismatch", "labelflip_model_mismatch", "warn", "warn or error when a baseline was recorded with another "
                                                           "model (weights sha256) than the one gated"),
    ("margin", "labelflip_margin", "0.05", "fail only when a flip rate rose (robust accuracy fell) by more than this "
                                           "much, absolute, in [0, 1)"),
    ("norm-margin", "labelflip_norm_margin", "0.10", "fail only when minimal norms shrank by more than this "
                                                     "fraction, in [0, 1)"),
]
FLAGS = [
    ("regen", "regenerate the baselines of the selected gate cases instead of checking them"),
    ("require-data", "fail, instead of skip, gate cases whose dataset is not on this machine"),
    ("uncapped", "attack every selected image, lifting the per-class caps some attacks have (e.g. Brendel-Bethge)"),
    ("trust-pickle", "load a pickled whole-module --labelflip-model (this executes code from the file)"),
    ("strict", "fail the session when the baseline directory holds baselines no case of the profile uses"),
    ("require-runs", "fail, instead of computing, the gate cases that --labelflip-runs holds no run of"),
    ("fail-on-drift", "fail on drift too: where flips and white noise land (symmetry, catch-all classes, dominant "
                      "targets), which every retrain changes; by default drift is reported, not failed"),
]
DEFAULTS = {ini: default for _, ini, default, _ in OPTIONS}

# How the gate names the library's parameters in messages (LabelflipError.phrased): by its own options, and the
# CLI's where the gate has none.
OPTION_NAMES = {
    **{name.replace("-", "_"): f"--labelflip-{name}" for name, *_ in OPTIONS + FLAGS},
    "download": "the CLI's --download (labelflip train --dataset NAME --download)",
}


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
    # Fail the session on baselines that no case of the profile uses.
    strict: bool = False
    # Precomputed runs (`labelflip run --out`), and whether a case missing there fails instead of being computed.
    runs: Path | None = None
    require_runs: bool = False
    # A user's own test set: its path, its classes in the model's order, and the declared preprocessing.
    dataset_path: Path | None = None
    dataset_classes: tuple[str, ...] | None = None
    resize: int | None = None
    center_crop: int | None = None
    # Only a loss of robustness beyond these fails (decisions.Margins); drift fails only with fail_on_drift.
    margins: Margins = Margins()
    fail_on_drift: bool = False

    def class_names_of(self, dataset: str) -> tuple[str, ...]:
        from ..data.names import CLASS_NAMES

        return self.dataset_classes or self.class_names or CLASS_NAMES[dataset]

    def profile_cases(self) -> list[Case]:
        """Every case of the profile for the session's datasets and model, whatever `-k` selects."""
        return cases(get_profile(self.profile), self.datasets, own_model=self.model is not None)


MODEL_MISMATCH = ("warn", "error")


def _check_model_file(model: Path, in_channels: int, num_classes: int, arch: str | None,
                      mean: tuple[float, ...] | None, std: tuple[float, ...] | None, trust_pickle: bool) -> None:
    """Load the model once before collection, so that a file the options cannot load (a state dict without an
    architecture, an untrusted pickle, a damaged file) is one usage error rather than a failure in every test. Its
    checks on the dataset's images follow when the gate loads it for the tests."""
    import warnings

    from ..models.io import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gate's own load reports them, once
        try:
            load_model(model, arch=arch, mean=mean, std=std, trust_pickle=trust_pickle,
                       in_channels=in_channels, num_classes=num_classes)
        except LabelflipError as exc:
            raise ConfigError(f"--labelflip-model {model}: {exc.phrased(OPTION_NAMES)}") from None


def parse_gate_config(setting: Callable[[str], str], flag: Callable[[str], bool], rootpath: Path) -> GateConfig:
    """`setting(ini_key)` gives an option's value (command line over ini file over `DEFAULTS`), `flag(ini_key)` a
    switch's.

    Errors of the library's parsers name parameters: show them with `exc.phrased(OPTION_NAMES)`."""
    from ..data import CHANNELS, CLASS_NAMES, DATASETS
    from ..data.data_dir import named_data_dir

    try:
        profile = get_profile(setting("labelflip_profile"))
    except ConfigError as exc:
        raise ConfigError(f"--labelflip-profile: {exc}") from None
    seed = setting("labelflip_seed")
    if not str(seed).lstrip("-").isdigit():
        raise ConfigError(f"--labelflip-seed must be an integer, got {seed!r}")
    device = setting("labelflip_device")
    if device not in ("auto", "cpu"):  # only these need no torch import to validate
        from ..devices import resolve_device

        try:
            resolve_device(device, start=False)  # each worker starts the GPU it runs on
        except ConfigError as exc:
            raise ConfigError(f"--labelflip-device: {exc}") from None
    engine = setting("labelflip_engine")
    if engine != "auto":
        from ..attacks.engine import ENGINES

        if engine not in ENGINES:
            raise ConfigError(f"--labelflip-engine: unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    baselines_text = setting("labelflip_baselines")
    if baselines_text:
        baselines = Path(baselines_text) if Path(baselines_text).is_absolute() else Path(rootpath) / baselines_text
    else:
        baselines = REFERENCE_BASELINES
        if flag("labelflip_regen") and not in_source_checkout(baselines):
            raise ConfigError(f"--labelflip-regen would rewrite the reference baselines installed at {baselines}; "
                              "name the directory to write with --labelflip-baselines DIR")
    dataset = setting("labelflip_dataset") or None
    model = Path(setting("labelflip_model")) if setting("labelflip_model") else None
    source = None
    if dataset is not None and dataset not in DATASETS:
        if model is None:
            raise ConfigError(f"--labelflip-dataset: unknown dataset {dataset!r}: not a built-in dataset "
                              f"({', '.join(DATASETS)}); a path to your own test set is gated with your own "
                              "--labelflip-model")
        from ..data.own import describe_source

        try:
            source = describe_source(dataset)
        except LabelflipError as exc:
            raise ConfigError(f"--labelflip-dataset: {exc.phrased(OPTION_NAMES)}") from None
    datasets = (source.name,) if source else (dataset,) if dataset else profile.datasets
    resize, center_crop = (_pixels(setting(k), f"--labelflip-{k[10:].replace('_', '-')}")
                           for k in ("labelflip_resize", "labelflip_center_crop"))
    if (resize or center_crop) and source is None:
        raise ConfigError("--labelflip-resize/--labelflip-center-crop apply to your own data (a path given as "
                          "--labelflip-dataset)")
    arch, mean_text, std_text = (setting(k) or None for k in ("labelflip_arch", "labelflip_mean", "labelflip_std"))
    bounds_text, names_text = setting("labelflip_bounds"), setting("labelflip_class_names")
    mean = std = class_names = None
    bounds = (0.0, 1.0)
    if model is not None or mean_text or std_text or names_text or bounds_text != "0,1":
        from ..models.io import parse_bounds, parse_channel_values, parse_class_names

        if names_text and len(datasets) != 1:
            raise ConfigError("--labelflip-class-names needs --labelflip-dataset (names belong to one dataset)")
        mean = parse_channel_values(mean_text, "mean") if mean_text else None
        std = parse_channel_values(std_text, "std") if std_text else None
        bounds = parse_bounds(bounds_text)
        known = source.class_names if source else CLASS_NAMES[datasets[0]]
        class_names = parse_class_names(names_text, len(known)) if names_text else None
    if model is not None:
        if not model.is_file():
            raise ConfigError(f"--labelflip-model: no model file at {model}")
        if dataset is None:
            raise ConfigError("--labelflip-model needs --labelflip-dataset: the dataset your model classifies")
        if not baselines_text:
            raise ConfigError("--labelflip-model needs --labelflip-baselines DIR: your model is gated against its own "
                              "baselines (create them once with --labelflip-regen), not labelflip's reference models'")
        if source is not None:
            from ..data.own import Preprocess, model_order, source_channels

            try:
                model_order(source, class_names)
                channels = source_channels(source, Preprocess(resize, center_crop))
            except LabelflipError as exc:
                raise ConfigError(f"--labelflip-dataset {dataset}: {exc.phrased(OPTION_NAMES)}") from None
        else:
            channels = CHANNELS[dataset]
        num_classes = len(class_names or (source.class_names if source else CLASS_NAMES[dataset]))
        _check_model_file(model, channels, num_classes, arch, mean, std, flag("labelflip_trust_pickle"))
    elif arch or mean or std:
        raise ConfigError("--labelflip-arch/--labelflip-mean/--labelflip-std describe a --labelflip-model; none given")
    data_dir = setting("labelflip_data_dir") or None
    if data_dir is not None:
        named_data_dir(data_dir)  # a data dir named by an option must exist; checked before any collection
    report = setting("labelflip_report")
    if report:
        from ..storage.out_dir import check_out_dir

        try:
            check_out_dir(Path(report))
        except ConfigError as exc:
            raise ConfigError(f"--labelflip-report: {exc}") from None
    runs_text = setting("labelflip_runs")
    runs = None
    if runs_text:
        runs = Path(runs_text)
        if not runs.is_dir():
            raise ConfigError(f"--labelflip-runs: no directory at {runs}; compute one with `labelflip run --out DIR`")
        if flag("labelflip_regen"):
            raise ConfigError("--labelflip-runs with --labelflip-regen: regenerate baselines from runs computed in "
                              "the session (drop --labelflip-runs)")
    elif flag("labelflip_require_runs"):
        raise ConfigError("--labelflip-require-runs needs --labelflip-runs DIR")
    model_mismatch = setting("labelflip_model_mismatch")
    if model_mismatch not in MODEL_MISMATCH:
        raise ConfigError(f"--labelflip-model-mismatch: expected one of {', '.join(MODEL_MISMATCH)}, "
                          f"got {model_mismatch!r}")
    return GateConfig(
        profile=profile.name, device=device, engine=engine,
        baselines=baselines, data_dir=data_dir, seed=int(seed),
        regen=flag("labelflip_regen"), require_data=flag("labelflip_require_data"),
        datasets=datasets, report=Path(report).absolute() if report else None, uncapped=flag("labelflip_uncapped"),
        model=model.absolute() if model else None, arch=arch, mean=mean, std=std, bounds=bounds,
        class_names=class_names, trust_pickle=flag("labelflip_trust_pickle"), model_mismatch=model_mismatch,
        strict=flag("labelflip_strict"), runs=runs.absolute() if runs else None,
        require_runs=flag("labelflip_require_runs"),
        dataset_path=Path(dataset).absolute() if source else None,
        dataset_classes=(class_names or source.class_names) if source else None,
        resize=resize, center_crop=center_crop, margins=_margins(setting),
        fail_on_drift=flag("labelflip_fail_on_drift"),
    )


def _margins(setting: Callable[[str], str]) -> Margins:
    values = {}
    for ini, field in (("labelflip_margin", "rate"), ("labelflip_norm_margin", "norm")):
        text = setting(ini)
        try:
            values[field] = float(text)
        except ValueError:
            values[field] = float("nan")
        if not 0 <= values[field] < 1:
            raise ConfigError(f"--{ini.replace('_', '-')} must be a number in [0, 1), got {text!r}")
    return Margins(**values)


def _pixels(text: str, option: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"{option} must be a positive number of pixels, got {text!r}")
    return int(text)
