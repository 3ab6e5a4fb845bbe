import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labelflip_models.analysis.flip_matrix import read_csv

from .helpers import run_cli

ATTACK = ["attack", "--dataset", "mnist-5k", "--attack", "fgsm"]




@pytest.mark.parametrize("argv, message", [
    (["attack", "--dataset", "cifar-100", "--attack", "fgsm", "--epsilon", "0.1", "--out", "x"],
     "unknown dataset 'cifar-100'"),
    (["attack", "--dataset", "mnist-5k", "--attack", "jsma", "--epsilon", "0.1", "--out", "x"], "invalid choice"),
    (["attack", "--dataset", "mnist-5k", "--attack", "autoattack", "--epsilon", "0.1", "--out", "x"],
     "--attack/--norm: attack 'autoattack' needs a norm: one of linf, l2"),
    (["attack", "--dataset", "mnist-5k", "--attack", "l2-autoattack", "--norm", "linf", "--epsilon", "0.1", "--out",
      "x"], "--attack/--norm: attack 'l2-autoattack' is an l2 attack, not linf"),
    (ATTACK + ["--epsilon", "-0.1", "--out", "x"], "epsilon must be a positive"),
    (ATTACK + ["--epsilon", "0", "--out", "x"], "epsilon must be a positive"),
    (ATTACK + ["--epsilon", "nan", "--out", "x"], "epsilon must be a positive"),
    (ATTACK + ["--epsilon", "1.5", "--out", "x"], "exceeds the width"),
    (ATTACK + ["--epsilon", "abc", "--out", "x"], "invalid float"),
    (ATTACK + ["--epsilon", "0.1", "--limit", "0", "--out", "x"], "--limit must be a positive"),
    (ATTACK + ["--epsilon", "0.1", "--batch-size", "0", "--out", "x"], "--batch-size must be positive"),
    (ATTACK + ["--epsilon", "0.1", "--out", "/proc/labelflip/out"], "not writable"),
    (["attack", "--dataset", "mnist-5k", "--attack", "l2-cw", "--epsilon", "0.1", "--out", "x"], "takes no epsilon"),
    (ATTACK + ["--out", "x"], "needs an epsilon"),
    (ATTACK + ["--epsilon", "0.1", "--param", "steps", "--out", "x"], "NAME=VALUE"),
    (ATTACK + ["--epsilon", "0.1", "--param", "steps=3", "--out", "x"], "has no parameter 'steps'"),
    (["attack", "--dataset", "mnist-5k", "--attack", "l2-cw", "--param", "steps=-3", "--out", "x"], "steps must be"),
    (ATTACK + ["--epsilon", "0.1", "--bounds", "1,0", "--out", "x"], "--bounds"),
    (ATTACK + ["--epsilon", "0.1", "--mean", "0.5", "--out", "x"], "describe a --model"),
    (ATTACK + ["--epsilon", "0.1", "--model", "missing.pt", "--out", "x"], "missing.pt"),
    (["noise", "--dataset", "mnist-5k", "--n", "0", "--out", "x"], "--n must be a positive"),
    (["report", "nowhere", "--out", "x"], "nowhere"),
    (["train", "--dataset", "mnist-5k", "--device", "cuda:7"] if not __import__("torch").cuda.is_available()
     else ["train", "--dataset", "mnist-5k", "--device", "tpu"], "device"),
])
def test_bad_arguments_exit_nonzero_with_one_clear_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_out_path_that_is_a_file(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc, _, err = run_cli(capsys, ATTACK + ["--epsilon", "0.1", "--out", str(target)])
    assert rc == 2 and "is not a directory" in err and target.read_text() == "keep me"


def test_missing_full_mnist_points_to_the_sample(capsys, tmp_path):
    rc, _, err = run_cli(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path)])
    assert rc == 2 and "mnist not found" in err and "mnist-5k" in err


@pytest.mark.slow
def test_attack_writes_the_papers_artefacts(capsys, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = run_cli(capsys, ATTACK + ["--epsilon", "0.1", "--limit", "120", "--out", str(out)])
    assert rc == 0, err
    assert "mnist-5k is a 5,000-image sample" in stdout
    # mnist-5k's test split is ordered by class: 120 images are digits 0 and 1 only, and the run says so.
    assert "note: the first 120 test images cover 2 of 10 classes" in stdout
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


# --------------------------------------------------------------------------------------------------
# Bring your own model: the same network through the user-model path gives the same answers
# --------------------------------------------------------------------------------------------------

class Pixels255(torch.nn.Module):
    """A model that takes pixels in [0, 255], as many user models do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x / 255)


@pytest.fixture(scope="module")
def reference():
    from labelflip_models.data import load_dataset
    from labelflip_models.models.cache import load_or_train

    return load_or_train(load_dataset("mnist-5k")).model


def attack_matrix(capsys, tmp_path, name, *extra):
    out = tmp_path / name
    rc, stdout, err = run_cli(capsys, ["attack", "--dataset", "mnist-5k", "--attack", "fgsm", "--limit", "200",
                                   "--out", str(out), *extra])
    assert rc == 0, err
    return json.loads((out / "result.json").read_text()), stdout


def test_engine_is_chosen_and_recorded(capsys, tmp_path, reference):
    auto, _ = attack_matrix(capsys, tmp_path, "auto", "--epsilon", "0.1")
    exact, _ = attack_matrix(capsys, tmp_path, "fp32", "--epsilon", "0.1", "--engine", "native-fp32")
    ref, _ = attack_matrix(capsys, tmp_path, "foolbox", "--epsilon", "0.1", "--engine", "foolbox")
    assert auto["attack"]["engine"].startswith("labelflip native") and ref["attack"]["engine"].startswith("foolbox")
    assert exact["flip_matrix"] == ref["flip_matrix"]  # same algorithm, same precision, same draws
    rc, _, err = run_cli(capsys, ["attack", "--dataset", "mnist-5k", "--attack", "l1-bb", "--limit", "5",
                              "--engine", "native", "--out", str(tmp_path / "df")])
    assert rc == 2 and "no kernel for this attack" in err and not (tmp_path / "df").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_user_models_match_the_reference_path(capsys, tmp_path, reference):
    ref, _ = attack_matrix(capsys, tmp_path, "ref", "--epsilon", "0.1")
    scripted = tmp_path / "model.ts"
    torch.jit.script(reference).save(str(scripted))
    ts, stdout = attack_matrix(capsys, tmp_path, "ts", "--epsilon", "0.1", "--model", str(scripted))
    assert ts["flip_matrix"] == ref["flip_matrix"] and ts["model"]["path"] == str(scripted)
    assert "catch-all classes" in stdout

    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    st, _ = attack_matrix(capsys, tmp_path, "st", "--epsilon", "0.1", "--model", str(weights), "--arch", "cw-mnist")
    assert st["flip_matrix"] == ref["flip_matrix"]

    # Pixel range 0..255: ε = 25.5 there is ε = 0.1 on [0, 1]; float rounding may move an image or two.
    wide = tmp_path / "wide.ts"
    torch.jit.script(Pixels255(reference).eval()).save(str(wide))
    w, _ = attack_matrix(capsys, tmp_path, "wide", "--epsilon", "25.5", "--bounds", "0,255", "--model", str(wide),
                         "--class-names", ",".join(f"digit {d}" for d in range(10)))
    assert np.abs(np.array(w["flip_matrix"]) - np.array(ref["flip_matrix"])).sum() <= 4
    assert w["attack"]["bounds"] == [0, 255] and w["class_names"][3] == "digit 3"


@pytest.mark.slow
def test_pickled_model_needs_trust(capsys, tmp_path, reference):
    pickled = tmp_path / "whole.pt"
    torch.save(reference, pickled)
    out = tmp_path / "run"
    argv = ["attack", "--dataset", "mnist-5k", "--attack", "linf-deepfool", "--limit", "30", "--out", str(out),
            "--model", str(pickled)]
    rc, _, err = run_cli(capsys, argv)
    assert rc == 2 and "--trust-pickle" in err and "Traceback" not in err and not out.exists()
    rc, stdout, err = run_cli(capsys, argv + ["--trust-pickle"])
    assert rc == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["attack"]["minimal"] and result["attack"]["epsilon"] is None
    assert "minimal perturbation" in stdout and set(result["minimal_norms"]["per_class"]) == set(map(str, range(10)))


@pytest.mark.slow
def test_noise_then_report(capsys, tmp_path):
    out = str(tmp_path / "noise")
    rc, stdout, err = run_cli(capsys, ["noise", "--dataset", "mnist-5k", "--n", "500", "--out", out])
    assert rc == 0, err
    noise = json.loads((tmp_path / "noise" / "noise.json").read_text())
    assert noise["n"] == 500 == sum(noise["counts"]) and "most land in" in stdout
    attack_matrix(capsys, tmp_path, "pgd", "--epsilon", "0.1")
    rc, stdout, err = run_cli(capsys, ["report", str(tmp_path / "noise"), str(tmp_path / "pgd"), "--out",
                                   str(tmp_path / "report")])
    assert rc == 0, err
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "White noise" in summary and "| fgsm |" in summary
    assert (tmp_path / "report" / "heatmaps" / "mnist-5k-fgsm-eps0.1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_internal_error_is_one_line_saying_it_is_a_bug(capsys, monkeypatch):
    """Not the user's input but labelflip's own fault: exit 70, one line, the traceback only behind --debug."""
    from labelflip_models import cli

    def broken(args, progress):
        raise RuntimeError("no such thing\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "bench-table", broken)
    rc, out, err = run_cli(capsys, ["bench-table", "report.json"])
    assert rc == cli.EXIT_BUG == 70 and out == ""
    assert err == ("labelflip: internal error (a bug in labelflip, please report it): RuntimeError: no such thing; "
                   "rerun with --debug for the traceback\n")
    with pytest.raises(RuntimeError, match="no such thing"):
        cli.main(["bench-table", "report.json", "--debug"])
