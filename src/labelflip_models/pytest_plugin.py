"""The labelflip pytest plugin: options, ini keys, markers and fixtures of the robustness gate.

Heavy imports (torch, foolbox) happen inside fixtures, so loading the plugin costs nothing for
test sessions that do not use it.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import BaselineError, DataNotFound, LabelflipError
from .gate_config import DEFAULT_BASELINES, GateConfig, gate_option_names, parse_gate_config
from .profiles import COMPILED_PER_PROCESS, PROFILES, REFERENCE_ARCHS, Case, cases, get_profile

if TYPE_CHECKING:
    from torch import nn

    from .case_runs import CaseRun
    from .data import Dataset

# Under --labelflip-report DIR, each computed run also lands in DIR/gate-runs/<case id>/ for the session's report;
# the controller empties that folder (and only it) when a session starts.
RUNS_DIR = "gate-runs"

_OPTIONS = [
    # (name, ini key, default, help)
    ("profile", "labelflip_profile", "smoke", f"gate profile: {', '.join(PROFILES)}"),
    ("device", "labelflip_device", "auto", "torch device for models and attacks: auto, cpu, cuda, cuda:N"),
    ("engine", "labelflip_engine", "auto", "engine of the fixed-ε attacks: auto (native kernels, bf16 where the "
                                           "hardware has it), foolbox, native, native-fp32; minimal attacks always "
                                           "run through Foolbox"),
    ("baselines", "labelflip_baselines", DEFAULT_BASELINES, "baseline directory (relative to rootdir)"),
    ("data-dir", "labelflip_data_dir", "", "dataset directory (default: $LABELFLIP_DATA_DIR)"),
    ("seed", "labelflip_seed", "0", "training and attack seed"),
    ("dataset", "labelflip_dataset", "", "run only this dataset's cases (required with --labelflip-model)"),
    ("report", "labelflip_report", "", "write heatmaps, trend plots, summary.md, report.html, report.json here"),
    ("model", "labelflip_model", "", "gate YOUR model: a TorchScript file, or a state_dict/safetensors file with "
                                     "--labelflip-arch; needs --labelflip-dataset and --labelflip-baselines"),
    ("arch", "labelflip_arch", "", "architecture (registry name) of a state-dict --labelflip-model"),
    ("mean", "labelflip_mean", "", "normalisation mean the model expects: one value or one per channel"),
    ("std", "labelflip_std", "", "normalisation std the model expects: one value or one per channel"),
    ("bounds", "labelflip_bounds", "0,1", "LO,HI pixel range of the model's input; ε is a fraction of HI-LO"),
    ("class-names", "labelflip_class_names", "", "comma-separated class names, or @FILE with one per line"),
    ("model-mismatch", "labelflip_model_mismatch", "warn", "warn or error when a baseline was recorded with another "
                                                           "model (weights sha256) than the one gated"),
]
_FLAGS = [
    ("regen", "regenerate the baselines of the selected gate cases instead of checking them"),
    ("require-data", "fail, instead of skip, gate cases whose dataset is not on this machine"),
    ("uncapped", "attack every selected image, lifting the per-class caps some attacks have (e.g. Brendel-Bethge)"),
    ("trust-pickle", "load a pickled whole-module --labelflip-model (this executes code from the file)"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labelflip", "adversarial label-flip regression gate")
    for name, ini, default, help_ in _OPTIONS:
        group.addoption(f"--labelflip-{name}", dest=ini, default=None, help=f"{help_} (ini: {ini}; default {default!r})")
        parser.addini(ini, help_, default=default)
    for name, help_ in _FLAGS:
        group.addoption(f"--labelflip-{name}", action="store_true", dest=f"labelflip_{name.replace('-', '_')}",
                        help=help_)


def _setting(config: pytest.Config, ini: str) -> str:
    value = config.getoption(ini)
    return value if value is not None else config.getini(ini)


_GATE_CONFIG = pytest.StashKey["GateConfig"]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        # Parsed and validated once, so bad options fail before any collection.
        config.stash[_GATE_CONFIG] = cfg = parse_gate_config(
            lambda ini: _setting(config, ini), config.getoption, config.rootpath)
    except LabelflipError as exc:
        raise pytest.UsageError(f"labelflip: {exc}") from None
    config.addinivalue_line("markers", "labelflip: an adversarial-robustness gate test (labelflip)")
    config.addinivalue_line("markers", "labelflip_cases(kind): parameterise over the profile's gate cases; kind is "
                                       "'all', 'fixed' (fixed-ε attacks) or 'minimal' (minimal-perturbation attacks)")
    if cfg.report is not None and not hasattr(config, "workerinput"):
        # The controller starts the report afresh; workers add the runs they compute.
        shutil.rmtree(cfg.report / RUNS_DIR, ignore_errors=True)
    # foolbox 3.3.4 imports a deprecated scipy namespace; the warning is not the user's to act on.
    config.addinivalue_line("filterwarnings", "ignore:Please import `gaussian_filter`:DeprecationWarning")
    # Foolbox's Brendel-Bethge hands eagerpy read-only arrays; it never writes to them.
    config.addinivalue_line("filterwarnings", "ignore:The given NumPy array is not writable:UserWarning")
    # From workerinput, not the environment: a pytest started inside a worker inherits the worker's env.
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        # Each xdist worker gets its share of the cores instead of all of them (oversubscription is slow).
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n` with xdist's default `--dist load`, keep each gate case's tests on one worker."""
    if config.getvalue("dist") != "load":
        return None  # the user chose a distribution mode; respect it
    from .xdist_scheduling import CaseScheduling

    cfg: GateConfig = config.stash[_GATE_CONFIG]
    # Cases of attacks that compile per process (numba) share a worker, so each process compiles at most once.
    scopes = {c.id: c.attack if c.attack in COMPILED_PER_PROCESS else c.id
              for c in cases(get_profile(cfg.profile), cfg.datasets, own_model=cfg.model is not None)}
    return CaseScheduling(config, log, scopes | {noise_scope(d): noise_scope(d) for d in cfg.datasets})


def noise_scope(dataset: str) -> str:
    return f"{dataset}-white-noise"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from .data import CLASS_NAMES

    cfg: GateConfig = metafunc.config.stash[_GATE_CONFIG]
    if "labelflip_noise_dataset" in metafunc.fixturenames:
        metafunc.parametrize("labelflip_noise_dataset", cfg.datasets, ids=[noise_scope(d) for d in cfg.datasets])
    if not {"labelflip_case", "labelflip_class"} & set(metafunc.fixturenames):
        return
    marker = metafunc.definition.get_closest_marker("labelflip_cases")
    kind = marker.args[0] if marker and marker.args else "all"
    if kind not in ("all", "fixed", "minimal"):
        raise pytest.UsageError(f"labelflip_cases({kind!r}): kind must be 'all', 'fixed' or 'minimal'")
    selected = [c for c in cases(get_profile(cfg.profile), cfg.datasets, own_model=cfg.model is not None)
                if kind == "all" or c.minimal == (kind == "minimal")]
    if "labelflip_class" in metafunc.fixturenames:
        names = {d: cfg.class_names or CLASS_NAMES[d] for d in cfg.datasets}
        pairs = [(c, i) for c in selected for i in range(len(names[c.dataset]))]
        metafunc.parametrize(("labelflip_case", "labelflip_class"), pairs,
                             ids=[f"{c.id}-{names[c.dataset][i]}" for c, i in pairs])
    else:
        metafunc.parametrize("labelflip_case", selected, ids=[c.id for c in selected])


def pytest_sessionfinish(session: pytest.Session) -> None:
    cfg = session.config.stash.get(_GATE_CONFIG, None)
    if cfg is None or cfg.report is None or hasattr(session.config, "workerinput"):
        return
    if not (cfg.report / RUNS_DIR).is_dir():
        return  # no gate case ran
    from .reports import load_runs, write_report

    try:
        results, noise = load_runs([cfg.report / RUNS_DIR])
        written = write_report(cfg.report, results, noise)
    except LabelflipError as exc:
        session.config.get_terminal_writer().line(f"labelflip: report not written: {exc}", red=True)
        return
    summary = written.get("summary.md", cfg.report)
    session.config.get_terminal_writer().line(f"labelflip: report written to {cfg.report} (summary: {summary})")


@pytest.fixture(scope="session")
def labelflip_config(request: pytest.FixtureRequest) -> GateConfig:
    return request.config.stash[_GATE_CONFIG]


def _fail(problem: str) -> None:
    # Called outside except blocks, so the report shows the message without a chained traceback.
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def labelflip_dataset(labelflip_config: GateConfig) -> Callable[[str], Dataset]:
    """Factory: dataset name -> Dataset, loaded once per process; skips when the data is absent."""
    from .data import load_dataset

    loaded: dict[str, Dataset] = {}

    def get(name: str) -> Dataset:
        if name in loaded:
            return loaded[name]
        try:
            data = load_dataset(name, labelflip_config.data_dir)
            if labelflip_config.class_names:
                data = replace(data, class_names=labelflip_config.class_names)
            loaded[name] = data
            return data
        except DataNotFound as exc:
            missing = f"{exc} (--labelflip-require-data turns this skip into a failure)"
            problem = f"--labelflip-require-data: {exc}"
        except LabelflipError as exc:
            missing, problem = None, str(exc)
        if missing is not None and not labelflip_config.require_data:
            pytest.skip(missing)
        _fail(problem)

    return get


@pytest.fixture(scope="session")
def labelflip_device(labelflip_config: GateConfig, request: pytest.FixtureRequest) -> str:
    """The torch device of this process's models: under xdist on a multi-GPU machine, one GPU per worker."""
    from .devices import process_device

    return process_device(labelflip_config.device, getattr(request.config, "workerinput", {}).get("workerid"))


@pytest.fixture(scope="session")
def labelflip_reference_model(labelflip_config: GateConfig, labelflip_device: str) -> Callable[..., nn.Module]:
    """Factory: (dataset, arch=None) -> labelflip's reference model of that architecture (default: the dataset's
    first reference model), trained once and cached on disk."""
    from .model_cache import load_or_train

    models: dict[tuple[str, str], nn.Module] = {}

    def get(data: Dataset, arch: str | None = None) -> nn.Module:
        arch = arch or REFERENCE_ARCHS[data.name][0]
        if (data.name, arch) in models:
            return models[data.name, arch]
        try:
            trained = load_or_train(data, arch=arch, seed=labelflip_config.seed, device=labelflip_device)
        except LabelflipError as exc:
            problem = f"reference {arch} model for {data.name}: {exc}"
        else:
            trained.model.labelflip_sidecar = trained.sidecar
            models[data.name, arch] = trained.model
            return trained.model
        _fail(problem)

    return get


@pytest.fixture(scope="session")
def labelflip_user_model(labelflip_config: GateConfig, labelflip_device: str) -> Callable[[Dataset], nn.Module]:
    """Factory: dataset -> the --labelflip-model file, loaded once, checked on the dataset's images."""
    from .attacks import Bounds
    from .gate import load_user_model

    cfg = labelflip_config
    loaded: dict[str, nn.Module] = {}

    def get(data: Dataset) -> nn.Module:
        if data.name in loaded:
            return loaded[data.name]
        try:
            model = load_user_model(cfg.model, data, Bounds(*cfg.bounds), arch=cfg.arch, mean=cfg.mean, std=cfg.std,
                                    trust_pickle=cfg.trust_pickle)
            model.labelflip_source = str(cfg.model)
            loaded[data.name] = model.to(labelflip_device)
            return loaded[data.name]
        except LabelflipError as exc:
            problem = f"--labelflip-model {cfg.model}: {gate_option_names(str(exc))}"
        _fail(problem)

    return get


@pytest.fixture(scope="session")
def labelflip_model(labelflip_config: GateConfig, request: pytest.FixtureRequest) -> Callable[..., nn.Module]:
    """Factory: dataset -> the model under test, in eval mode. --labelflip-model picks a file; overriding this
    fixture in a conftest.py plugs in any other model. The reference models also take an architecture."""
    if labelflip_config.model is not None:
        return request.getfixturevalue("labelflip_user_model")
    return request.getfixturevalue("labelflip_reference_model")


@pytest.fixture(scope="session")
def labelflip_case_model(labelflip_dataset: Callable[[str], Dataset],
                         labelflip_model: Callable[..., nn.Module]) -> Callable[[Case], nn.Module]:
    """Factory: case -> the model its attack runs on. A case of a dataset's default model asks labelflip_model for
    the dataset alone, so an override of labelflip_model that takes only a dataset keeps working."""
    def get(case: Case) -> nn.Module:
        data = labelflip_dataset(case.dataset)
        return labelflip_model(data, case.arch) if case.arch else labelflip_model(data)

    return get


def _shared_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    # pytest-xdist's pattern: workers share the parent of their base temp dirs, one per session.
    if not hasattr(request.config, "workerinput"):
        return None
    return tmp_path_factory.getbasetemp().parent / "labelflip-runs"


@pytest.fixture(scope="session")
def labelflip_run(labelflip_config: GateConfig, labelflip_dataset: Callable[[str], Dataset],
                  labelflip_case_model: Callable[[Case], nn.Module],
                  tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Callable[[Case], CaseRun]:
    """Factory: case -> its attack run, computed once per session even across xdist workers."""
    from .attacks import Bounds
    from .case_runs import CaseRun, computed_once, load_run, save_run
    from .gate import run_case, write_baseline
    from .results import write_run

    cfg = labelflip_config
    runs: dict[Case, CaseRun] = {}
    shared = _shared_dir(request, tmp_path_factory)

    def compute(case: Case, data: Dataset) -> CaseRun:
        try:
            result, attacked = run_case(case, data, labelflip_case_model(case), cfg.seed, Bounds(*cfg.bounds),
                                        cfg.uncapped, cfg.engine)
            run = CaseRun.from_attack(case, result, attacked)
            if cfg.regen:
                write_baseline(case, cfg.baselines, result, run.class_norms() if case.minimal else None)
            if cfg.report is not None:
                write_run(cfg.report / RUNS_DIR / case.id, result)
            return run
        except LabelflipError as exc:
            problem = str(exc)
        _fail(problem)

    def get(case: Case) -> CaseRun:
        if case in runs:
            return runs[case]
        data = labelflip_dataset(case.dataset)
        try:
            runs[case] = computed_once(shared and shared / case.id, lambda: compute(case, data), save_run,
                                       lambda directory: load_run(case, directory))
            return runs[case]
        except LabelflipError as exc:
            problem = str(exc)
        _fail(problem)

    return get


@pytest.fixture(scope="session")
def labelflip_noise(labelflip_config: GateConfig, labelflip_dataset: Callable[[str], Dataset],
                    labelflip_model: Callable[[Dataset], nn.Module], tmp_path_factory: pytest.TempPathFactory,
                    request: pytest.FixtureRequest) -> Callable[[str], dict[str, Any]]:
    """Factory: dataset name -> its white-noise probe (noise.json's content), computed once per session."""
    from .case_runs import computed_once, load_json, save_json
    from .gate import run_noise_probe, write_noise_baseline
    from .profiles import noise_baseline_path
    from .results import write_noise

    cfg = labelflip_config
    probes: dict[str, dict[str, Any]] = {}
    shared = _shared_dir(request, tmp_path_factory)

    def compute(data: Dataset) -> dict[str, Any]:
        result = run_noise_probe(data, labelflip_model(data), get_profile(cfg.profile).noise_samples, cfg.seed,
                                 cfg.bounds)
        if cfg.regen:
            write_noise_baseline(noise_baseline_path(cfg.baselines, cfg.profile, data.name), result, cfg.profile)
        if cfg.report is not None:
            write_noise(cfg.report / RUNS_DIR / noise_scope(data.name), result)
        return result

    def get(name: str) -> dict[str, Any]:
        if name in probes:
            return probes[name]
        data = labelflip_dataset(name)
        try:
            probes[name] = computed_once(shared and shared / noise_scope(name), lambda: compute(data),
                                         save_json, load_json)
            return probes[name]
        except LabelflipError as exc:
            problem = str(exc)
        _fail(problem)

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
        _check_model(baseline, run.result["model"]["sha256"], labelflip_config)
        return baseline
    except BaselineError as exc:
        problem = str(exc)
    _fail(problem)


@pytest.fixture
def labelflip_noise_baseline(labelflip_noise_dataset: str, labelflip_config: GateConfig,
                             labelflip_noise: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The committed white-noise baseline of the current dataset (skips under --labelflip-regen)."""
    from .gate import load_noise_baseline
    from .profiles import noise_baseline_path

    cfg = labelflip_config
    probe = labelflip_noise(labelflip_noise_dataset)
    path = noise_baseline_path(cfg.baselines, cfg.profile, labelflip_noise_dataset)
    if cfg.regen:
        pytest.skip(f"baseline regenerated: {path}")
    try:
        baseline = load_noise_baseline(path, probe["class_names"], probe["n"], cfg.profile)
        _check_model({**baseline, "path": str(path)}, probe["model"]["sha256"], cfg)
        return baseline
    except BaselineError as exc:
        problem = str(exc)
    _fail(problem)


def _check_model(baseline: dict[str, Any], current: str, cfg: GateConfig) -> None:
    from .gate import check_same_model

    note = check_same_model(baseline["path"], baseline["result"]["model"]["sha256"], current, cfg.model_mismatch)
    if note is not None:
        warnings.warn(f"labelflip: {note}", stacklevel=3)
