"""The gate's fixtures: datasets, models, and each case's run and baseline, computed once per session.

Every factory turns a library error into one failed test whose message names the gate's own options.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import DataNotFound
from .config import OPTION_NAMES, RUNS_DIR, GateConfig
from .failures import failing_the_test, record_decision
from .profiles import Case, checked_model_id, get_profile, noise_baseline_path, noise_scope
from .session import gate_config

if TYPE_CHECKING:
    from torch import nn

    from ..data import Dataset
    from ..runs.model_checks import ModelCheck
    from .decisions import Decision
    from .models_under_test import ModelsUnderTest
    from .shared_runs import CaseRun


@pytest.fixture(scope="session")
def labelflip_config(request: pytest.FixtureRequest) -> GateConfig:
    try:
        return gate_config(request.config)
    except pytest.UsageError as exc:  # settings from the ini file, parsed on first use
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


@pytest.fixture
def labelflip_record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`labelflip_record(check, decision, **figures)`: the decision's figures as the test's properties, as
    record_property stores them (JUnit XML carries them, xdist forwards them; the session's summary reads them)."""
    def record(check: str, decision: Decision, **figures: object) -> None:
        record_decision(lambda name, value: request.node.user_properties.append((name, value)), check, decision,
                        **figures)

    return record


@pytest.fixture(scope="session")
def labelflip_dataset(labelflip_config: GateConfig) -> Callable[[str], Dataset]:
    """Factory: dataset name -> Dataset, loaded once per process; skips when the data is absent."""
    from ..data import Preprocess, load_dataset

    cfg = labelflip_config
    loaded: dict[str, Dataset] = {}

    def get(name: str) -> Dataset:
        if name not in loaded:
            with failing_the_test():
                try:
                    if cfg.dataset_path is not None:
                        data = load_dataset(str(cfg.dataset_path), class_names=cfg.class_names,
                                            preprocess=Preprocess(cfg.resize, cfg.center_crop))
                    else:
                        data = load_dataset(name, cfg.data_dir)
                except DataNotFound as exc:  # absent, not broken: a skip unless the data is required
                    message = exc.phrased(OPTION_NAMES)
                    if not cfg.require_data:
                        pytest.skip(f"{message} (--labelflip-require-data turns this skip into a failure)")
                    raise pytest.fail.Exception(f"--labelflip-require-data: {message}", pytrace=False) from None
            # A built-in dataset's classes are renamed; a user's own are already in the order of the names.
            rename = cfg.class_names and cfg.dataset_path is None
            loaded[name] = replace(data, class_names=cfg.class_names) if rename else data
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def labelflip_device(labelflip_config: GateConfig, request: pytest.FixtureRequest) -> str:
    """The torch device of this process's models: under xdist on a multi-GPU machine, one GPU per worker."""
    from ..devices import process_device, share_cpu_threads

    # From workerinput, not the environment: a pytest started inside a worker inherits the worker's env.
    worker = getattr(request.config, "workerinput", {})
    if worker.get("workercount"):
        share_cpu_threads(int(worker["workercount"]))
    return process_device(labelflip_config.device, worker.get("workerid"))


@pytest.fixture(scope="session")
def labelflip_models_under_test() -> ModelsUnderTest:
    """What the session's result files say about each model it loaded."""
    from .models_under_test import ModelsUnderTest

    return ModelsUnderTest()


@pytest.fixture(scope="session")
def labelflip_reference_model(labelflip_config: GateConfig, labelflip_device: str,
                              labelflip_models_under_test: ModelsUnderTest) -> Callable[..., nn.Module]:
    """Factory: (dataset, arch=None) -> labelflip's reference model of that architecture (default: the dataset's
    first reference model), trained once and cached on disk."""
    from ..models.cache import load_or_train
    from ..models.reference import REFERENCE_ARCHS

    models: dict[tuple[str, str], nn.Module] = {}

    def get(data: Dataset, arch: str | None = None) -> nn.Module:
        arch = arch or REFERENCE_ARCHS[data.name][0]
        if (data.name, arch) not in models:
            with failing_the_test(f"reference {arch} model for {data.name}: "):
                trained = load_or_train(data, arch=arch, seed=labelflip_config.seed, device=labelflip_device)
            models[data.name, arch] = labelflip_models_under_test.add(
                trained.model, arch=arch, path=trained.weights_path, reference=trained.sidecar)
        return models[data.name, arch]

    return get


@pytest.fixture(scope="session")
def labelflip_user_model(labelflip_config: GateConfig, labelflip_device: str,
                         labelflip_models_under_test: ModelsUnderTest) -> Callable[[Dataset], nn.Module]:
    """Factory: dataset -> the --labelflip-model file, loaded once, checked on the dataset's images."""
    from ..attacks import Bounds
    from ..runs.evaluate import load_user_model

    cfg = labelflip_config
    loaded: dict[str, nn.Module] = {}

    def get(data: Dataset) -> nn.Module:
        if data.name not in loaded:
            with failing_the_test(f"--labelflip-model {cfg.model}: "):
                model = load_user_model(cfg.model, data, Bounds(*cfg.bounds), arch=cfg.arch, mean=cfg.mean,
                                        std=cfg.std, trust_pickle=cfg.trust_pickle)
            loaded[data.name] = labelflip_models_under_test.add(model.to(labelflip_device), arch=cfg.arch,
                                                                path=cfg.model)
        return loaded[data.name]

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


@pytest.fixture(scope="session")
def labelflip_model_checks(labelflip_config: GateConfig, labelflip_dataset: Callable[[str], Dataset],
                           labelflip_case_model: Callable[[Case], nn.Module]) -> Callable[[Case], list[ModelCheck]]:
    """Factory: case -> the checks (runs/model_checks.py) of the model its attack runs on, on the first test images
    of each class, computed once per model and process."""
    from ..attacks import Bounds
    from ..runs.model_checks import checks_on_test_images

    done: dict[int, tuple[nn.Module, list[ModelCheck]]] = {}

    def get(case: Case) -> list[ModelCheck]:
        model = labelflip_case_model(case)
        if id(model) not in done:  # the model is kept beside its checks, so its id is not reused
            done[id(model)] = (model, checks_on_test_images(model, labelflip_dataset(case.dataset),
                                                            Bounds(*labelflip_config.bounds)))
        return done[id(model)][1]

    return get


def _refuse_unchecked(request: pytest.FixtureRequest, case: Case, what: str) -> None:
    """Under --labelflip-regen, fail the test when the model `case` attacks fails its model checks: `what` is not
    written. Each test that needs it says so in one line; the checks' own messages are test_model_checks'."""
    failed = [c.name for c in request.getfixturevalue("labelflip_model_checks")(case) if not c.passed]
    if failed:
        pytest.fail(f"not writing {what}: the model fails {', '.join(failed)} in "
                    f"test_model_checks[{checked_model_id(case)}]", pytrace=False)


def _shared_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    # pytest-xdist's pattern: workers share the parent of their base temp dirs, one per session.
    if not hasattr(request.config, "workerinput"):
        return None
    return tmp_path_factory.getbasetemp().parent / "labelflip-runs"


@pytest.fixture(scope="session")
def labelflip_run(labelflip_config: GateConfig, labelflip_dataset: Callable[[str], Dataset],
                  labelflip_case_model: Callable[[Case], nn.Module], labelflip_models_under_test: ModelsUnderTest,
                  tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Callable[[Case], CaseRun]:
    """Factory: case -> its attack run, computed once per session even across xdist workers."""
    from ..attacks import Bounds
    from ..runs.results import write_run
    from .baselines import write_baseline
    from .cases import compute_case
    from .shared_runs import computed_once, load_run, save_run

    cfg = labelflip_config
    runs: dict[Case, CaseRun] = {}
    shared = _shared_dir(request, tmp_path_factory)

    def regenerated(case: Case) -> bool:
        """Whether --labelflip-regen rewrites this case's baseline: it is a case of the session's selection (after
        -k), not a run computed only for another case's comparison (its AutoAttack run)."""
        selected = {item.callspec.params["labelflip_case"] for item in request.session.items
                    if "labelflip_case" in getattr(getattr(item, "callspec", None), "params", {})}
        return not selected or case in selected

    def compute(case: Case, data: Dataset) -> CaseRun:
        model = labelflip_case_model(case)
        regen = cfg.regen and regenerated(case)
        if regen:  # before the attack: a baseline of a model the attacks cannot evaluate guards a fiction
            _refuse_unchecked(request, case, f"{case.id}'s baseline")
        run = compute_case(case, data, model, labelflip_models_under_test.info(model), cfg.seed,
                           Bounds(*cfg.bounds), cfg.uncapped, cfg.engine, memo=labelflip_models_under_test.memo(model))
        result = run.result
        if regen:
            strength = None
            if not case.minimal:
                from .strength import compare_with_autoattack

                # The AutoAttack run comes through `get`, once per session like any run; it needs no other run,
                # so waiting for its lock while holding this case's cannot deadlock two workers.
                strength = compare_with_autoattack(run, cfg.profile_cases(), get, cfg.margins.rate).entry()
            write_baseline(case, cfg.baselines, result, run.outcomes(), attack_strength=strength)
        if cfg.report is not None:
            write_run(cfg.report / RUNS_DIR / case.id, result)
        return run

    def stored(case: Case, data: Dataset) -> CaseRun | None:
        """The case's run from --labelflip-runs, checked to be this model's and this profile's."""
        from .runs_dir import stored_run

        sha256 = labelflip_models_under_test.info(labelflip_case_model(case))["sha256"]
        run = stored_run(cfg.runs, case, data, sha256, seed=cfg.seed, bounds=Bounds(*cfg.bounds), engine=cfg.engine,
                         uncapped=cfg.uncapped)
        if run is None and cfg.require_runs:
            pytest.fail(f"--labelflip-require-runs: {cfg.runs} holds no complete run of {case.id}; compute it with "
                        f"`labelflip run --profile {cfg.profile} --out {cfg.runs}`", pytrace=False)
        return run

    def get(case: Case) -> CaseRun:
        if case not in runs:
            data = labelflip_dataset(case.dataset)
            with failing_the_test("--labelflip-runs: " if cfg.runs else ""):
                run = None if cfg.runs is None else stored(case, data)
            if run is not None and cfg.report is not None:
                write_run(cfg.report / RUNS_DIR / case.id, run.result)
            with failing_the_test():
                runs[case] = run or computed_once(shared and shared / case.id, lambda: compute(case, data), save_run,
                                                  lambda directory: load_run(case, directory))
        return runs[case]

    return get


@pytest.fixture(scope="session")
def labelflip_noise(labelflip_config: GateConfig, labelflip_dataset: Callable[[str], Dataset],
                    labelflip_model: Callable[[Dataset], nn.Module], labelflip_models_under_test: ModelsUnderTest,
                    tmp_path_factory: pytest.TempPathFactory,
                    request: pytest.FixtureRequest) -> Callable[[str], dict[str, Any]]:
    """Factory: dataset name -> its white-noise probe (noise.json's content), computed once per session."""
    from ..attacks import Bounds
    from ..runs.evaluate import probe_noise
    from ..runs.results import write_noise
    from .baselines import write_noise_baseline
    from .shared_runs import computed_once, load_json, save_json

    cfg = labelflip_config
    probes: dict[str, dict[str, Any]] = {}
    shared = _shared_dir(request, tmp_path_factory)

    def compute(data: Dataset) -> dict[str, Any]:
        model = labelflip_model(data)
        if cfg.regen:
            case = next(c for c in cfg.profile_cases() if c.dataset == data.name and not c.arch)
            _refuse_unchecked(request, case, f"{data.name}'s white-noise baseline")
        result = probe_noise(data, model, labelflip_models_under_test.info(model),
                             get_profile(cfg.profile).noise_samples, cfg.seed, Bounds(*cfg.bounds))
        if cfg.regen:
            write_noise_baseline(noise_baseline_path(cfg.baselines, cfg.profile, data.name), result, cfg.profile)
        if cfg.report is not None:
            write_noise(cfg.report / RUNS_DIR / noise_scope(data.name), result)
        return result

    def get(name: str) -> dict[str, Any]:
        if name not in probes:
            data = labelflip_dataset(name)
            with failing_the_test():
                probes[name] = computed_once(shared and shared / noise_scope(name), lambda: compute(data),
                                             save_json, load_json)
        return probes[name]

    return get


@pytest.fixture
def labelflip_baseline(labelflip_case: Case, labelflip_config: GateConfig,
                       labelflip_run: Callable[[Case], CaseRun]) -> dict[str, Any]:
    """The committed baseline of the current case, validated against its run (skips under --labelflip-regen)."""
    from .baselines import load_baseline

    cfg = labelflip_config
    run = labelflip_run(labelflip_case)
    if cfg.regen:
        pytest.skip(f"baseline regenerated: {labelflip_case.baseline_path(cfg.baselines, '.json')}")
    with failing_the_test():
        baseline = load_baseline(labelflip_case, cfg.baselines, run.result["class_names"], run.result["dataset"]["n"])
        _check_model(baseline, run.result["model"]["sha256"], cfg)
    return baseline


@pytest.fixture
def labelflip_noise_baseline(labelflip_noise_dataset: str, labelflip_config: GateConfig,
                             labelflip_noise: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The committed white-noise baseline of the current dataset (skips under --labelflip-regen)."""
    from .baselines import load_noise_baseline

    cfg = labelflip_config
    probe = labelflip_noise(labelflip_noise_dataset)
    path = noise_baseline_path(cfg.baselines, cfg.profile, labelflip_noise_dataset)
    if cfg.regen:
        pytest.skip(f"baseline regenerated: {path}")
    with failing_the_test():
        baseline = load_noise_baseline(path, probe["class_names"], probe["n"], cfg.profile)
        _check_model({**baseline, "path": str(path)}, probe["model"]["sha256"], cfg)
    return baseline


def _check_model(baseline: dict[str, Any], current: str, cfg: GateConfig) -> None:
    from .baselines import check_same_model

    note = check_same_model(baseline["path"], baseline["result"]["model"]["sha256"], current, cfg.model_mismatch)
    if note is not None:
        warnings.warn(f"labelflip: {note}", stacklevel=3)
