"""A runs directory: gate cases computed ahead of the pytest session (`labelflip run`, possibly over many processes
and hosts), one folder per case in the layout the session shares runs in (shared_runs.py: result.json written
last marks a complete run), and the checks that let the gate use one for the model and profile it gates.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..attacks import Bounds, make_attack
from ..attacks.memo import Memos
from ..data import Dataset
from ..errors import ConfigError
from ..runs.distributed import World, all_values, broadcast
from .cases import case_attack, case_images, compute_case
from .profiles import Case
from .shared_runs import CaseRun, load_run, save_run

SCRATCH = ".chunks"
T = TypeVar("T")


def case_dir(runs: Path, case: Case) -> Path:
    return runs / case.id


def engine_matches(requested: str, described: str, has_kernel: bool) -> bool:
    """Whether a run made by `described` (AttackResult params) is what engine `requested` runs for an attack with
    (or without) a native kernel. Native runs in bf16 or fp32 as the hardware allows, so `auto` and `native` accept
    either; attacks without a kernel run their reference under every engine."""
    native = described.startswith("labelflip native")
    if not has_kernel or requested in ("reference", "foolbox"):
        return not native
    if requested == "native-fp32":
        return described == "labelflip native (fp32)"
    return native


def mismatches(run: CaseRun, case: Case, data: Dataset, indices: np.ndarray, model_sha256: str, seed: int,
               bounds: Bounds, engine: str) -> list[str]:
    """How a stored run differs from what the gate would compute for `case` (empty: it is that run). Attacks
    without a native kernel run their reference under every engine, so `engine` is judged only where it could
    have made a difference (`engine_matches`)."""
    result, problems = run.result, []
    attack, dataset = result["attack"], result["dataset"]
    theirs = result["model"].get("sha256")
    if theirs != model_sha256:
        problems.append(f"computed with model sha256 {str(theirs)[:12]}…, the gate tests {model_sha256[:12]}…")
    if dataset["name"] != case.dataset or dataset["fingerprint"] != data.fingerprint:
        problems.append(f"a run on {dataset['name']} (files {dataset['fingerprint'][:12]}…), not on this "
                        f"{case.dataset} (files {data.fingerprint[:12]}…)")
    if attack["name"] != case.attack:
        problems.append(f"a run of {attack['name']}, not {case.attack}")
    epsilon = None if case.epsilon is None else case.epsilon * (bounds.upper - bounds.lower)
    if attack["epsilon"] != epsilon or attack["bounds"] != [bounds.lower, bounds.upper]:
        problems.append(f"ε {attack['epsilon']} in bounds {attack['bounds']}, not ε {epsilon} in "
                        f"{[bounds.lower, bounds.upper]}")
    expected = case_attack(case).settings()
    differ = [k for k, v in expected.items() if attack.get(k) != v]
    if differ:  # e.g. a run stored before an upgrade changed the profile's settings
        problems.append(f"attack settings {', '.join(f'{k}={attack.get(k)!r}' for k in differ)}, not the "
                        f"profile's {', '.join(f'{k}={expected[k]!r}' for k in differ)}")
    if not engine_matches(engine, attack["engine"], make_attack(case.attack).native_kernel):
        problems.append(f"run by {attack['engine']}, not by engine {engine}")
    if not np.array_equal(run.indices.numpy(), indices):
        problems.append(f"attacked {len(run.indices)} other test images than the case's {len(indices)} "
                        f"(another profile or --labelflip-uncapped setting?)")
    if result["provenance"]["seed"] != seed:
        problems.append(f"seed {result['provenance']['seed']}, not {seed}")
    return problems


def stored_run(runs: Path, case: Case, data: Dataset, model_sha256: str, *, seed: int, bounds: Bounds = Bounds(),
               engine: str = "auto", uncapped: bool = False) -> CaseRun | None:
    """The complete run of `case` in `runs`, None if there is none; ConfigError naming what differs if the run
    there is not the one the gate would compute, or cannot be read."""
    directory = case_dir(runs, case)
    try:
        run = load_run(case, directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # safetensors and json errors are ValueErrors
        raise ConfigError(f"{directory} holds an unreadable run ({type(exc).__name__}: {exc}); delete the folder "
                          "and compute it again") from None
    if run is None:
        return None
    problems = mismatches(run, case, data, case_images(case, data, uncapped)[0], model_sha256, seed, bounds, engine)
    if problems:
        raise ConfigError(f"{directory} is not this case's run: {'; '.join(problems)}. Gate it with the settings it "
                          "was computed with, or compute it again into another runs directory")
    return run


def scratch_dir(directory: Path, data: Dataset, indices: np.ndarray, model_sha256: str, seed: int, engine: str,
                device: str, bounds: Bounds, batch_size: int | None, attack_settings: dict[str, Any]) -> Path:
    """Where the ranks keep a case's finished chunks: one folder per setting that changes what a chunk holds, so a
    rerun with other images, model, seed, engine, device type, batch size or attack settings (an upgrade that
    changed the profile's) never takes up a chunk it did not compute."""
    key = json.dumps([data.fingerprint, hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest(),
                      model_sha256, seed, engine, torch.device(device).type, bounds.lower, bounds.upper, batch_size,
                      attack_settings], sort_keys=True)
    return directory / f"{SCRATCH}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _on_main(work: Callable[[], T], world: World) -> T:
    """`work()` on rank 0, and its value, or the exception it raised, on every rank: a rank that raised alone would
    leave the others waiting in the next collective."""
    value, error = None, None
    if world.main:
        try:
            value = work()
        except Exception as exc:  # re-raised below, on every rank
            error = exc
    value, error = broadcast((value, error), world)
    if error is not None:
        raise error
    return value


def _complete(runs: Path, case: Case, data: Dataset, model_sha256: str, **settings: Any) -> bool:
    return stored_run(runs, case, data, model_sha256, **settings) is not None


def compute_runs(cases: Sequence[Case], runs: Path, model_of: Callable[[Case], tuple[Dataset, nn.Module,
                 dict[str, Any]]], *, seed: int, bounds: Bounds = Bounds(), engine: str = "auto",
                 uncapped: bool = False, batch_size: int | None = None, world: World = World(),
                 progress: bool = True) -> list[Case]:
    """Compute each case missing from `runs` (every rank of `world` together) and return the cases computed.

    A case whose run is there is checked (`stored_run`) and skipped; one begun before resumes from the chunks its
    ranks finished (runs/distributed.py), which go once rank 0 has written the run.
    """
    computed, images, start = [], 0, time.perf_counter()
    memos = Memos()
    for number, case in enumerate(cases, 1):
        data, model, info = model_of(case)
        shas = all_values(info["sha256"], world)
        if len(set(shas)) > 1:
            raise ConfigError(f"the processes hold different models for {case.id} (sha256 "
                              f"{', '.join(sorted({sha[:12] for sha in shas}))}); give every host the same weights")
        directory = case_dir(runs, case)
        # Rank 0 reads the folder and every rank follows it, so that all skip or compute the same cases.
        done = _on_main(partial(_complete, runs, case, data, info["sha256"], seed=seed, bounds=bounds, engine=engine,
                                uncapped=uncapped), world)
        if not done:
            indices = case_images(case, data, uncapped)[0]
            scratch = scratch_dir(directory, data, indices, info["sha256"], seed, engine,
                                  str(next(model.parameters()).device), bounds, batch_size,
                                  case_attack(case).settings())
            scratch.mkdir(parents=True, exist_ok=True)
            # A rank that fails inside compute_case stops the job through its launcher (torchrun; srun with
            # --kill-on-bad-exit): the others are waiting in one of its collectives.
            run = compute_case(case, data, model, info, seed, bounds, uncapped, engine, world=world, scratch=scratch,
                               batch_size=batch_size, memo=memos(model))
            _on_main(partial(save_run, run, directory), world)
            if world.local_rank == 0:  # one process per host clears the chunks its host's ranks kept
                for folder in directory.glob(f"{SCRATCH}-*"):
                    shutil.rmtree(folder, ignore_errors=True)
            computed.append(case)
            images += len(indices)
        if progress and world.main:
            rate = images / (time.perf_counter() - start)
            print(f"labelflip run: {number}/{len(cases)} cases ({case.id} {'found' if done else 'done'}), "
                  f"{rate:.1f} images/s over {world.size} process{'es' if world.size > 1 else ''}",
                  file=sys.stderr, flush=True)
    return computed
