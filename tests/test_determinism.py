"""Same seed on the CPU, two separate processes: bit-identical flip matrices and identical result.json counts,
and bit-identical trained weights."""

import json
import subprocess
import sys

import pytest

from .fault_injection import REPO

ATTACKS = {
    # Random start: the seed decides the start point, so this also checks that the seed reaches the kernel.
    "linf-pgd": ["--attack", "linf-pgd", "--epsilon", "0.05", "--limit", "1000"],
    "l2-deepfool": ["--attack", "l2-deepfool", "--limit", "200"],
}
TRAIN_TINY = """
import sys
from pathlib import Path
from labelflip_models.models.cache import load_or_train
from tests.helpers import TINY_RECIPE, tiny_dataset
print(load_or_train(tiny_dataset(), recipe=TINY_RECIPE, root=Path(sys.argv[1])).sha256)
"""


def _attack(out, args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelflip_models.cli", "attack", "--dataset", "mnist-5k",
                           "--device", "cpu", "--seed", "0", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS)
def test_same_seed_in_two_processes_gives_the_same_flips(tmp_path, attack):
    runs = [_attack(tmp_path / name, ATTACKS[attack]) for name in ("first", "second")]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    first, second = ((tmp_path / name / "flip_matrix.csv").read_bytes() for name in ("first", "second"))
    assert first == second
    results = [json.loads((tmp_path / name / "result.json").read_text()) for name in ("first", "second")]
    assert results[0]["flip_fraction"]["count"] > 0  # a matrix of nothing but zeros would agree trivially
    # Everything but the provenance (timestamps, wall times) is the same: counts, intervals, analysis, norms.
    first_result, second_result = ({k: v for k, v in r.items() if k != "provenance"} for r in results)
    assert first_result == second_result


def test_training_in_two_processes_gives_the_same_weights(tmp_path):
    shas = [subprocess.run([sys.executable, "-c", TRAIN_TINY, str(tmp_path / name)], cwd=REPO, capture_output=True,
                           text=True, timeout=300, check=True).stdout.strip() for name in ("a", "b")]
    assert len(shas[0]) == 64 and shas[0] == shas[1]
