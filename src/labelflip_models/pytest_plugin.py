"""The labelflip pytest plugin: options, ini keys, markers and fixtures of the robustness gate.

Heavy imports (torch, foolbox) happen inside fixtures, so loading the plugin costs nothing for
test sessions that do not use it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import BaselineError, ConfigError, DataNotFound, LabelflipError
from .profiles import PROFILES, Case, cases, get_profile

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .data import Dataset

_OPTIONS = [
    # (name, ini key, default, help)
    ("profile", "labelflip_profile", "smoke", f"gate profile: {', '.join(PROFILES)}"),
    ("device", "labelflip_device", "auto", "torch device for models and attacks: auto, cpu, cuda, cuda:N"),
    ("baselines", "labelflip_baselines", "fixtures/baselines", "baseline directory (relative to rootdir)"),
    ("data-dir", "labelflip_data_dir", "", "dataset directory (default: $LABELFLIP_DATA_DIR)"),
    ("seed", "labelflip_seed", "0", "training and attack seed"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labelflip", "adversarial label-flip regression gate")
    for name, ini, default, help_ in _OPTIONS:
        group.addoption(f"--labelflip-{name}", dest=ini, default=None, help=f"{help_} (ini: {ini}; default {default})")
        parser.addini(ini, help_, default=default)
    group.addoption("--labelflip-regen", action="store_true", dest="labelflip_regen",
                    help="regenerate the baselines of the selected gate cases instead of checking them")
    group.addoption("--labelflip-require-data", action="store_true", dest="labelflip_require_data",
                    help="fail, instead of skip, gate cases whose dataset is not on this machine")


def _setting(config: pytest.Config, ini: str) -> str:
    value = config.getoption(ini)
    return value if value is not None else config.getini(ini)


_GATE_CONFIG = pytest.StashKey["GateConfig"]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        # Parsed and validated once, so bad options fail before any collection.
        config.stash[_GATE_CONFIG] = gate_config(config)
    except LabelflipError as exc:
        raise pytest.UsageError(f"labelflip: {exc}") from None
    config.addinivalue_line("markers", "labelflip: an adversarial-robustness gate test (labelflip)")
    # foolbox 3.3.4 imports a deprecated scipy namespace; the warning is not the user's to act on.
    config.addinivalue_line("filterwarnings", "ignore:Please import `gaussian_filter`:DeprecationWarning")
    if getattr(config.option, "dist", None) == "load":
        # xdist's default scheduling would scatter each dataset's cases over all workers, and every worker
        # would load (or wait for another to train) every model; loadgroup keeps a dataset on one worker.
        config.option.dist = "loadgroup"
    if getattr(config, "workerinput", {}).get("labelflip_loadgroup"):
        config.option.loadgroup = True  # workers parse the command line afresh and never saw the switch
    # From workerinput, not the environment: a pytest started inside a worker inherits the worker's env.
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        # Each xdist worker gets its share of the cores instead of all of them (oversubscription is slow).
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput["labelflip_loadgroup"] = node.config.option.dist == "loadgroup"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("labelflip_case")
        if case is not None:
            item.add_marker(pytest.mark.xdist_group(case.dataset))


@dataclass(frozen=True)
class GateConfig:
    profile: str
    device: str
    baselines: Path
    data_dir: str | None
    seed: int
    regen: bool
    require_data: bool


def gate_config(config: pytest.Config) -> GateConfig:
    profile = _setting(config, "labelflip_profile")
    get_profile(profile)
    seed = _setting(config, "labelflip_seed")
    if not str(seed).lstrip("-").isdigit():
        raise ConfigError(f"--labelflip-seed must be an integer, got {seed!r}")
    device = _setting(config, "labelflip_device")
    if device not in ("auto", "cpu"):  # only these need no torch import to validate
        from .devices import resolve_device

        resolve_device(device)
    baselines = Path(_setting(config, "labelflip_baselines"))
    return GateConfig(
        profile=profile, device=device,
        baselines=baselines if baselines.is_absolute() else Path(config.rootpath) / baselines,
        data_dir=_setting(config, "labelflip_data_dir") or None, seed=int(seed),
        regen=config.getoption("labelflip_regen"), require_data=config.getoption("labelflip_require_data"),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from .data import CLASS_NAMES

    if not {"labelflip_case", "labelflip_class"} & set(metafunc.fixturenames):
        return
    selected = cases(get_profile(metafunc.config.stash[_GATE_CONFIG].profile))
    if "labelflip_class" in metafunc.fixturenames:
        pairs = [(c, i) for c in selected for i in range(len(CLASS_NAMES[c.dataset]))]
        metafunc.parametrize(("labelflip_case", "labelflip_class"), pairs,
                             ids=[f"{c.id}-{CLASS_NAMES[c.dataset][i]}" for c, i in pairs])
    else:
        metafunc.parametrize("labelflip_case", selected, ids=[c.id for c in selected])


@pytest.fixture(scope="session")
def labelflip_config(request: pytest.FixtureRequest) -> GateConfig:
    return request.config.stash[_GATE_CONFIG]


@pytest.fixture(scope="session")
def labelflip_dataset(labelflip_config: GateConfig) -> Callable[[str], Dataset]:
    """Factory: dataset name -> Dataset, loaded once per process; skips when the data is absent."""
    from .data import load_dataset

    loaded: dict[str, Dataset] = {}

    def get(name: str) -> Dataset:
        if name in loaded:
            return loaded[name]
        try:
            loaded[name] = load_dataset(name, labelflip_config.data_dir)
            return loaded[name]
        except DataNotFound as exc:
            missing, problem = str(exc), f"--labelflip-require-data: {exc}"
        except LabelflipError as exc:
            missing, problem = None, str(exc)
        # Outside the except blocks, like every fail/skip here: no chained traceback in the report.
        if missing is not None and not labelflip_config.require_data:
            pytest.skip(missing)
        pytest.fail(problem, pytrace=False)

    return get


@pytest.fixture(scope="session")
def labelflip_reference_model(labelflip_config: GateConfig) -> Callable[[Dataset], nn.Module]:
    """Factory: dataset -> labelflip's reference model for it, trained once and cached on disk."""
    from .devices import resolve_device
    from .model_cache import load_or_train

    device = resolve_device(labelflip_config.device)
    models: dict[str, nn.Module] = {}

    def get(data: Dataset) -> nn.Module:
        if data.name not in models:
            trained = load_or_train(data, seed=labelflip_config.seed, device=device)
            trained.model.labelflip_sidecar = trained.sidecar
            models[data.name] = trained.model
        return models[data.name]

    return get


@pytest.fixture(scope="session")
def labelflip_model(labelflip_reference_model: Callable[[Dataset], nn.Module]) -> Callable[[Dataset], nn.Module]:
    """Factory: dataset -> the model under test, in eval mode. Override it to gate your own model."""
    return labelflip_reference_model


@dataclass
class CaseRun:
    case: Case
    result: dict[str, Any]
    images: torch.Tensor
    clipped: torch.Tensor


def _compute_run(case: Case, cfg: GateConfig, data: Dataset, model: nn.Module) -> CaseRun:
    from .gate import run_case, write_baseline

    result, attacked = run_case(case, data, model, cfg.seed)
    if cfg.regen:
        write_baseline(case, cfg.baselines, result)
    return CaseRun(case, result, attacked.images, attacked.clipped)


def _save_run(run: CaseRun, directory: Path) -> None:
    """Tensors first, JSON last: the JSON marks a complete entry."""
    from safetensors.torch import save

    from .atomic import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(directory / "adversarials.safetensors", save({"images": run.images, "clipped": run.clipped}))
    atomic_write_text(directory / "result.json", json.dumps(run.result))


def _load_run(case: Case, directory: Path) -> CaseRun | None:
    from safetensors.torch import load_file

    if not (directory / "result.json").exists():
        return None
    tensors = load_file(directory / "adversarials.safetensors")
    return CaseRun(case, json.loads((directory / "result.json").read_text()), tensors["images"], tensors["clipped"])


@pytest.fixture(scope="session")
def labelflip_run(labelflip_config: GateConfig, labelflip_dataset: Callable[[str], Dataset],
                  labelflip_model: Callable[[Dataset], nn.Module],
                  tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Callable[[Case], CaseRun]:
    """Factory: case -> its attack run, computed once per session even across xdist workers."""
    from filelock import FileLock

    runs: dict[Case, CaseRun] = {}
    # pytest-xdist's pattern: workers share the parent of their base temp dirs, one per session.
    in_xdist_worker = hasattr(request.config, "workerinput")
    shared = tmp_path_factory.getbasetemp().parent / "labelflip-runs" if in_xdist_worker else None

    def get(case: Case) -> CaseRun:
        if case in runs:
            return runs[case]
        data = labelflip_dataset(case.dataset)

        def compute() -> CaseRun:
            try:
                return _compute_run(case, labelflip_config, data, labelflip_model(data))
            except LabelflipError as exc:
                problem = str(exc)
            pytest.fail(problem, pytrace=False)

        if shared is None:
            runs[case] = compute()
        else:
            directory = shared / case.id
            directory.mkdir(parents=True, exist_ok=True)
            with FileLock(str(directory / "lock")):
                run = _load_run(case, directory)
                if run is None:
                    run = compute()
                    _save_run(run, directory)
            runs[case] = run
        return runs[case]

    return get


@pytest.fixture
def labelflip_baseline(labelflip_case: Case, labelflip_config: GateConfig,
                       labelflip_run: Callable[[Case], CaseRun]) -> dict[str, Any]:
    """The committed baseline of the current case, validated against its run (skips under --labelflip-regen)."""
    from .gate import load_baseline

    run = labelflip_run(labelflip_case)
    if labelflip_config.regen:
        path = labelflip_case.baseline_path(labelflip_config.baselines, ".json")
        pytest.skip(f"baseline regenerated: {path}")
    try:
        baseline = load_baseline(labelflip_case, labelflip_config.baselines, run.result["class_names"],
                                 run.result["dataset"]["n"])
    except BaselineError as exc:
        problem = str(exc)
    else:
        recorded, current = baseline["result"]["model"]["sha256"], run.result["model"]["sha256"]
        if recorded != current:
            # Expected after retraining or on another CPU; the statistical checks decide, this only informs.
            warnings.warn(f"labelflip: {labelflip_case.id}: model {current[:12]} is gated against baselines of "
                          f"model {recorded[:12]}", stacklevel=2)
        return baseline
    pytest.fail(problem, pytrace=False)
