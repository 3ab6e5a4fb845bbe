import json
import math

import numpy as np
import pytest

from labelflip_models.cli import main
from labelflip_models.flips import read_csv

ATTACK = ["attack", "--dataset", "mnist-5k", "--attack", "fgsm"]


def run(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, message", [
    (["attack", "--dataset", "cifar-100", "--attack", "fgsm", "--epsilon", "0.1", "--out", "x"], "invalid choice"),
    (["attack", "--dataset", "mnist-5k", "--attack", "cw", "--epsilon", "0.1", "--out", "x"], "invalid choice"),
    (ATTACK + ["--epsilon", "-0.1", "--out", "x"], "epsilon must be a positive"),
    (ATTACK + ["--epsilon", "0", "--out", "x"], "epsilon must be a positive"),
    (ATTACK + ["--epsilon", "nan", "--out", "x"], "epsilon must be a positive"),
    (ATTACK + ["--epsilon", "1.5", "--out", "x"], "exceeds the width"),
    (ATTACK + ["--epsilon", "abc", "--out", "x"], "invalid float"),
    (ATTACK + ["--epsilon", "0.1", "--limit", "0", "--out", "x"], "--limit must be a positive"),
    (ATTACK + ["--epsilon", "0.1", "--batch-size", "0", "--out", "x"], "--batch-size must be positive"),
    (ATTACK + ["--epsilon", "0.1", "--out", "/proc/labelflip/out"], "not writable"),
    (["train", "--dataset", "mnist-5k", "--device", "cuda:7"] if not __import__("torch").cuda.is_available()
     else ["train", "--dataset", "mnist-5k", "--device", "tpu"], "device"),
])
def test_bad_arguments_exit_nonzero_with_one_clear_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, argv)
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_out_path_that_is_a_file(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc, _, err = run(capsys, ATTACK + ["--epsilon", "0.1", "--out", str(target)])
    assert rc == 2 and "is not a directory" in err and target.read_text() == "keep me"


def test_missing_full_mnist_points_to_the_sample(capsys, tmp_path):
    rc, _, err = run(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path)])
    assert rc == 2 and "mnist not found" in err and "mnist-5k" in err


@pytest.mark.slow
def test_attack_writes_the_papers_artefacts(capsys, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, ATTACK + ["--epsilon", "0.1", "--limit", "120", "--out", str(out)])
    assert rc == 0, err
    assert "mnist-5k is a 5,000-image sample" in stdout
    matrix, names = read_csv(out / "flip_matrix.csv")
    result = json.loads((out / "result.json").read_text())
    assert names == [str(d) for d in range(10)] and matrix.tolist() == result["flip_matrix"]
    assert matrix.sum() == 120 == result["dataset"]["n"]
    assert result["dataset"]["selection"] == "first 120 test images"
    assert 0 < result["perturbation_linf"]["max"] <= 0.1 + 1e-6
    assert result["attack"]["name"] == "fgsm" and result["attack"]["epsilon"] == 0.1
    flips = matrix.sum(1) - np.diag(matrix)
    for name, k in zip(names, flips):
        entry = result["per_class_flip_rate"][name]
        assert entry["count"] == k and entry["ci"][0] <= (k / entry["n"] if entry["n"] else 0) <= entry["ci"][1]
    prov = result["provenance"]
    assert {"seed", "versions", "device", "timestamp", "wall_seconds", "machine"} <= set(prov)
    assert len(result["model"]["sha256"]) == 64 and len(result["dataset"]["fingerprint"]) == 64
    assert not math.isnan(result["clean_accuracy"]["rate"])
