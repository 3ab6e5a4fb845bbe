"""Analysis benchmark: a run's statistics and its report at K = 1000 classes, 50 images per class (an ImageNet-sized
validation run), on a synthetic attack run, so no model or dataset is needed.

Times `summarize` (flip matrix, rates, robust accuracy, symmetry bootstrap and permutation test, dominant targets,
pairs, catch-all classes) and `write_report` (heatmap, tables, Markdown, HTML) together, and fails above BUDGET_S:
the guard against work that grows with K^2 in Python, which took this from hours to seconds. It records no
`kernel` in `extra_info`, so `labelflip bench-table` and `bench-compare` (ratios to a reference loop) leave it out.

Run without xdist:  pytest robustness_tests/benchmarks/test_bench_analysis.py -p no:xdist
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelflip_models.analysis.flip_matrix import matrix_from_json
from labelflip_models.attacks import AttackResult
from labelflip_models.reports.write import write_report
from labelflip_models.runs.results import RESULT_SCHEMA, summarize

CLASSES = 1000
PER_CLASS = 50
ROUNDS = 2  # about 10 s each; the minimum discounts the first round's imports and caches
BUDGET_S = 60.0  # measured: 9.7 s on a 2-core CPU


def synthetic_run(k: int, per_class: int, seed: int = 0) -> AttackResult:
    """90% of the images classified correctly; 60% of those flipped, three times in four to one of three classes
    favoured by their true class, else anywhere."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    n = len(labels)
    clean = labels.copy()
    wrong = rng.random(n) < 0.1
    clean[wrong] = (labels[wrong] + rng.integers(1, k, wrong.sum())) % k
    favoured = (np.arange(k)[:, None] + rng.integers(1, k, (k, 3))) % k
    pick = rng.integers(0, 4, n)
    target = np.where(pick < 3, favoured[labels, np.minimum(pick, 2)], (labels + rng.integers(1, k, n)) % k)
    flipped = ~wrong & (rng.random(n) < 0.6)
    adv = np.where(flipped, target, clean)
    images = torch.zeros(n, 1)
    clipped = images + torch.from_numpy(rng.uniform(0, 0.1, (n, 1))).float()
    return AttackResult(epsilon=0.1, norm="linf", images=images, labels=torch.from_numpy(labels), raw=clipped,
                        clipped=clipped, success=torch.from_numpy(flipped), attacked=torch.ones(n, dtype=torch.bool),
                        clean_pred=torch.from_numpy(clean), adv_pred=torch.from_numpy(adv), seconds=0.0,
                        params={"name": "linf-pgd", "epsilon": 0.1, "norm": "linf", "seed": 0})


@pytest.fixture(scope="module")
def run() -> AttackResult:
    return synthetic_run(CLASSES, PER_CLASS)


def test_summarize_and_report_at_1000_classes(benchmark, run, tmp_path):
    names = [f"class {i}" for i in range(CLASSES)]

    def analyse_and_report() -> dict:
        result = {"schema": RESULT_SCHEMA, "dataset": {"name": "synthetic", "n": len(run.labels), "selection": "all"},
                  "model": {"sha256": "0" * 64}, "attack": run.params, **summarize(run, names, seed=0),
                  "provenance": {"seed": 0}}
        write_report(tmp_path, [result], [])
        return result

    result = benchmark.pedantic(analyse_and_report, rounds=ROUNDS, iterations=1)
    best = benchmark.stats.stats.min
    benchmark.extra_info.update(classes=CLASSES, images=len(run.labels), seconds=best)
    assert matrix_from_json(result["flip_matrix"]).sum() == CLASSES * PER_CLASS
    assert result["flip_matrix"]["format"] == "coo"  # stored sparse: no 1000 x 1000 nested list
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "report.json").is_file()
    assert best <= BUDGET_S, f"summarize + write_report took {best:.1f} s at K = {CLASSES} (budget {BUDGET_S:.0f} s)"
