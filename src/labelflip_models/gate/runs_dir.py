"""A runs directory: gate cases computed ahead of the pytest session (`labelflip run`, possibly over many processes
and hosts), one folder per case in the layout the session shares runs in (shared_runs.py: result.json written
last marks a complete run), and the checks that let the gate use one for the model and profile it gates.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..attacks import Bounds
from ..data import Dataset
from ..errors import ConfigError
from ..runs.distributed import World, barrier, broadcast
from .cases import case_images, compute_case
from .profiles import Case
from .shared_runs import CaseRun, load_run, save_run

SCRATCH = ".chunks"


def case_dir(runs: Path, case: Case) -> Path:
    return runs / case.id


def mismatches(run: CaseRun, case: Case, indices: np.ndarray, model_sha256: str, seed: int) -> list[str]:
    """How a stored run differs from what the gate would compute for `case` (empty: it is that run)."""
    result, problems = run.result, []
    theirs = result["model"].get("sha256")
    if theirs != model_sha256:
        problems.append(f"computed with model sha256 {str(theirs)[:12]}…, the gate tests {model_sha256[:12]}…")
    if result["dataset"]["name"] != case.dataset:
        problems.append(f"a run on {result['dataset']['name']}, not {case.dataset}")
    if result["attack"]["name"] != case.attack:
        problems.append(f"a run of {result['attack']['name']}, not {case.attack}")
    if not np.array_equal(run.indices.numpy(), indices):
        problems.append(f"attacked {len(run.indices)} other test images than the case's {len(indices)} "
                        f"(another profile, --labelflip-uncapped setting or dataset file?)")
    if result["provenance"]["seed"] != seed:
        problems.append(f"seed {result['provenance']['seed']}, not {seed}")
    return problems


def stored_run(runs: Path, case: Case, data: Dataset, model_sha256: str, seed: int, uncapped: bool) -> CaseRun | None:
    """The complete run of `case` in `runs`, None if there is none; ConfigError naming what differs if the run
    there is not the one the gate would compute."""
    run = load_run(case, case_dir(runs, case))
    if run is None:
        return None
    problems = mismatches(run, case, case_images(case, data, uncapped)[0], model_sha256, seed)
    if problems:
        raise ConfigError(f"{case_dir(runs, case)} is not this case's run: {'; '.join(problems)}")
    return run


def compute_runs(cases: Sequence[Case], runs: Path, model_of: Callable[[Case], tuple[Dataset, nn.Module,
                 dict[str, Any]]], *, seed: int, bounds: Bounds = Bounds(), engine: str = "auto",
                 world: World = World(), progress: bool = True) -> list[Case]:
    """Compute each case missing from `runs` (every rank of `world` together) and return the cases computed.

    A case whose run is there is checked (`mismatches`) and skipped; one begun before keeps its finished chunks in
    the case's scratch folder (runs/distributed.py), removed once rank 0 has written the run.
    """
    computed, images, start = [], 0, time.perf_counter()
    for number, case in enumerate(cases, 1):
        data, model, info = model_of(case)
        directory = case_dir(runs, case)
        # Rank 0 decides, and every rank follows: all must skip or compute the same cases (collectives pair up).
        status = "missing"
        if world.main:
            try:
                status = "found" if stored_run(runs, case, data, info["sha256"], seed, False) else "missing"
            except ConfigError as exc:
                status = str(exc)
        status = broadcast(status, world)
        if status not in ("found", "missing"):
            raise ConfigError(status)
        if status == "missing":
            scratch = directory / SCRATCH
            scratch.mkdir(parents=True, exist_ok=True)
            run = compute_case(case, data, model, info, seed, bounds, engine=engine, world=world, scratch=scratch)
            if run is not None:
                save_run(run, directory)
            barrier(world)
            if world.local_rank == 0:  # one process per host clears the chunks its host's ranks kept
                shutil.rmtree(scratch, ignore_errors=True)
            computed.append(case)
            images += len(case_images(case, data)[0])
        if progress and world.main:
            rate = images / (time.perf_counter() - start)
            print(f"labelflip run: {number}/{len(cases)} cases ({case.id} {status if status == 'found' else 'done'}), "
                  f"{rate:.1f} images/s over {world.size} process{'es' if world.size > 1 else ''}",
                  file=sys.stderr, flush=True)
    return computed
