"""pytest-xdist scheduling for the gate: all tests of one gate case (or one white-noise probe) go to one worker.

Each case's attack run is computed once per session; if its tests were spread over workers, all but one
worker would sit waiting on the run's file lock. xdist's `loadgroup` would express this with `xdist_group`
marks, but xdist 3.8 writes the group into `item._nodeid`, which pytest 9 no longer reads, so the marks are
silently ignored. Scheduling on the test ids, which carry the case id, needs no private API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from xdist.scheduler import LoadScopeScheduling

from .profiles import COMPILED_PER_PROCESS, ITERATIVE, ONE_GRADIENT, Case, noise_scope, series_id, step_pair_id


def case_scope(case: Case) -> str:
    """The worker a case's tests share: its own, but cases of attacks that compile per process (numba) share one,
    which compiles once; a model's cases of a single-step attack share one, which takes its gradient once; and a
    model's ITERATIVE cases share one, with the evaluation checks that read all of them."""
    if case.attack in COMPILED_PER_PROCESS:
        return case.attack
    if case.attack in ONE_GRADIENT or case.attack == ITERATIVE:
        return f"{case.model_key}-{case.attack}"
    return case.id


def scopes(selected: list[Case]) -> dict[str, str]:
    """What CaseScheduling looks up: each selected case's id, each dataset's white-noise probe, and the ids of the
    evaluation checks over a model's ITERATIVE runs (gate/profiles.py's series_id, step_pair_id) -> their scope.
    A check run on another worker than the runs it reads would wait for that worker's file locks."""
    out = {c.id: case_scope(c) for c in selected} | {noise_scope(c.dataset): noise_scope(c.dataset) for c in selected}
    for c in selected:
        if c.attack == ITERATIVE:
            out[series_id(c)] = out[step_pair_id(c)] = case_scope(c)
    return out


class CaseScheduling(LoadScopeScheduling):
    """LoadScopeScheduling whose scope is looked up from the gate case named in a test's parameter id
    (`scopes`: case id -> scope); other tests are scheduled one by one, as with `--dist load`."""

    def __init__(self, config, log, scopes: Mapping[str, str]) -> None:
        super().__init__(config, log)
        self._scopes = dict(scopes)
        # Longest first, and bounded by "[", "-" or "]", so that "mnist-5k-fgsm-eps0.1" is not read as
        # "mnist-5k-fgsm-eps0.1" of another dataset or as a prefix of "...-eps0.15".
        names = sorted(self._scopes, key=len, reverse=True)
        self._pattern = re.compile(r"[\[-](" + "|".join(map(re.escape, names)) + r")(?=[-\]])") if names else None

    def _split_scope(self, nodeid: str) -> str:
        params = nodeid[nodeid.find("["):] if "[" in nodeid else ""
        match = self._pattern.search(params) if self._pattern else None
        return self._scopes[match.group(1)] if match else nodeid
