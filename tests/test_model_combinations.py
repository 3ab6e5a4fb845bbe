"""A user's model in every format × with/without mean/std × pixel range 0..1 / 0..255 × every engine, each running a
real attack through the CLI; through the gate's code path and whole gate sessions with mean/std and 0..255.

Options tested one at a time let a TorchScript model given with --mean/--std crash every attack: the normalising
wrapper around the scripted module was copied to channels_last, which breaks scripted parameters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labelflip_models.attacks import Bounds
from labelflip_models.attacks.engine import ENGINES
from labelflip_models.data import load_dataset
from labelflip_models.gate.cases import run_case
from labelflip_models.gate.profiles import Case
from labelflip_models.models.architectures import build_model
from labelflip_models.runs.evaluate import load_user_model
from labelflip_models.runs.results import model_block

from .helpers import GATE_ONLY, reference_net, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method)` is deprecated:FutureWarning")

FORMATS = ("scripted", "traced", "state-dict", "safetensors", "pickle")
NORMALISATIONS = {"raw": (), "mean-std": ("0.5", "0.25")}
RANGES = {"0..1": (0.0, 1.0), "0..255": (0.0, 255.0)}
LIMIT = 16


@pytest.fixture(scope="module")
def net():
    """The bare C&W MNIST net (no normalisation of its own), with fixed random weights."""
    torch.manual_seed(0)
    return build_model("cw-mnist").net.eval()


def _saved(net, root):
    """The same weights saved the five ways a user may hand them over, with the CLI options each needs."""
    example = torch.rand(2, 1, 28, 28)
    torch.jit.script(net).save(str(root / "scripted.ts"))
    torch.jit.trace(net, example).save(str(root / "traced.ts"))
    torch.save(net.state_dict(), root / "weights.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "weights.safetensors"))
    torch.save(net, root / "whole.pt")
    return {"scripted": (root / "scripted.ts", []), "traced": (root / "traced.ts", []),
            "state-dict": (root / "weights.pt", ["--arch", "cw-mnist"]),
            "safetensors": (root / "weights.safetensors", ["--arch", "cw-mnist"]),
            "pickle": (root / "whole.pt", ["--trust-pickle"])}


@pytest.fixture(scope="module")
def model_files(net, tmp_path_factory):
    return _saved(net, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def trained_model_files(tmp_path_factory):
    """The MNIST-5k reference weights for inputs (x - 127.5) / 64 with x in 0..255, saved the five ways: a gate
    session refuses an untrained model (test_model_checks)."""
    return _saved(reference_net("mnist-5k", scale=255.0, mean=127.5, std=64.0), tmp_path_factory.mktemp("trained"))


def _refused(fmt: str, engine: str) -> bool:
    """bf16 cannot run inside a TorchScript graph: engine 'native' refuses such models, with one clear error."""
    return fmt in ("scripted", "traced") and engine == "native"


# The gate's code path attacks a whole profile case (1,000 images): there, every format × engine with the combination
# that used to crash (mean/std, 0..255); the CLI test covers all of them on a few images.
GATE_COMBINATIONS = [(f, "mean-std", "0..255", e) for f in FORMATS for e in ENGINES]


def _option_kwargs(fmt: str, norm: str) -> dict:
    mean_std = NORMALISATIONS[norm]
    return {"arch": "cw-mnist" if fmt in ("state-dict", "safetensors") else None,
            "mean": (float(mean_std[0]),) if mean_std else None, "std": (float(mean_std[1]),) if mean_std else None,
            "trust_pickle": fmt == "pickle"}


@pytest.mark.slow
@pytest.mark.parametrize("norm, bounds", [(n, r) for n in NORMALISATIONS for r in RANGES])
def test_every_combination_through_the_cli(capsys, tmp_path, model_files, norm, bounds):
    """Per normalisation and range: all formats × engines attack the same images; formats agree where they run
    the same arithmetic (fp32 engines: all five; bf16 engines: the four eager formats)."""
    lo, hi = RANGES[bounds]
    matrices: dict[tuple[str, str], list] = {}
    for fmt in FORMATS:
        path, extra = model_files[fmt]
        mean_std = NORMALISATIONS[norm]
        for engine in ENGINES:
            out = tmp_path / f"{fmt}-{engine}"
            argv = ["attack", "--dataset", "mnist-5k", "--model", str(path), *extra, "--bounds", f"{lo:g},{hi:g}",
                    "--attack", "fgsm", "--epsilon", str(0.1 * (hi - lo)), "--limit", str(LIMIT),
                    "--engine", engine, "--out", str(out)]
            if mean_std:
                argv += ["--mean", mean_std[0], "--std", mean_std[1]]
            rc, _, err = run_cli(capsys, argv)
            if _refused(fmt, engine):
                assert rc == 2 and err.count("labelflip: error:") == 1 and "Traceback" not in err, err
                assert "engine 'native'" in err and "use native-fp32, reference or auto" in err, err
                assert not out.exists()
                continue
            assert rc == 0, f"{fmt} {norm} {bounds} {engine}: {err}"
            result = json.loads((out / "result.json").read_text())
            assert result["dataset"]["n"] == LIMIT and sum(map(sum, result["flip_matrix"])) == LIMIT
            assert result["model"]["path"] == str(path.absolute())
            assert result["attack"]["epsilon"] == pytest.approx(0.1 * (hi - lo))
            assert result["perturbation_linf"]["max"] <= 0.1 * (hi - lo) * (1 + 1e-5)
            matrices[fmt, engine] = result["flip_matrix"]
    for engine in ("foolbox", "native-fp32"):
        assert all(matrices[fmt, engine] == matrices["state-dict", engine] for fmt in FORMATS), engine
    for engine in ("auto", "native"):
        eager = ("state-dict", "safetensors", "pickle")
        assert all(matrices[fmt, engine] == matrices["state-dict", engine] for fmt in eager), engine


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist-5k")


@pytest.mark.parametrize("fmt, norm, bounds, engine", GATE_COMBINATIONS, ids=["-".join(c) for c in GATE_COMBINATIONS])
def test_every_combination_through_the_gate_code(model_files, mnist5k, fmt, norm, bounds, engine):
    """The gate's path: the plugin's loader for --labelflip-model, then a gate case's attack, at the profile's ε."""
    path, _ = model_files[fmt]
    range_ = Bounds(*RANGES[bounds])
    model = load_user_model(path, mnist5k, range_, **_option_kwargs(fmt, norm))
    case = Case("quick", "mnist-5k", "fgsm", 0.1)
    if _refused(fmt, engine):
        with pytest.raises(Exception, match="engine 'native'"):
            run_case(case, mnist5k, model, model_block(model), 0, range_, engine=engine)
        return
    result, attacked = run_case(case, mnist5k, model, model_block(model, path=path), 0, range_, engine=engine)
    n = result["dataset"]["n"]
    assert n > 0 and sum(map(sum, result["flip_matrix"])) == n
    assert result["attack"]["epsilon"] == pytest.approx(0.1 * (range_.upper - range_.lower))
    assert float((attacked.clipped - attacked.images).abs().max()) <= result["attack"]["epsilon"] * (1 + 1e-5)
    assert float(attacked.clipped.min()) >= range_.lower and float(attacked.clipped.max()) <= range_.upper


GATE_TESTS = GATE_ONLY


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_gate_session_with_mean_std_and_0_255(pytester_gate, trained_model_files, tmp_path, fmt):
    """Each format with --labelflip-mean/--labelflip-std and --labelflip-bounds 0,255 through a real gate session:
    baselines regenerated, then the gate passes on them."""
    path, extra = trained_model_files[fmt]
    own = ["--labelflip-model", str(path), "--labelflip-dataset", "mnist-5k", "--labelflip-mean", "127.5",
           "--labelflip-std", "64", "--labelflip-bounds", "0,255", "--labelflip-profile", "quick",
           "--labelflip-baselines", str(tmp_path / "b"), "-k", "fgsm", "-p", "no:xdist", "-p", "no:cacheprovider",
           *[o.replace("--", "--labelflip-") for o in extra]]
    pytester_gate.makepyfile(test_gate=GATE_TESTS)
    pytester_gate.runpytest_subprocess(*own, "--labelflip-regen").assert_outcomes(passed=1, skipped=13)
    recorded = json.loads((tmp_path / "b" / "quick" / "mnist-5k" / "fgsm-eps0.1.json").read_text())
    assert recorded["case"]["epsilon"] == 0.1 and recorded["result"]["attack"]["epsilon"] == pytest.approx(25.5)
    assert np.isclose(recorded["result"]["perturbation_linf"]["max"], 25.5, rtol=1e-4)
    pytester_gate.runpytest_subprocess(*own).assert_outcomes(passed=13, skipped=1)


def test_own_model_with_mean_std_bounds_and_class_names(capsys, tmp_path, model_files):
    """The options people combine: a scripted model, its normalisation, a 0..255 range and its own class names."""
    names = [f"digit-{d}" for d in range(10)]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "run"
    rc, stdout, err = run_cli(capsys, [
        "attack", "--dataset", "mnist-5k", "--model", str(model_files["scripted"][0]), "--mean", "127.5", "--std", "64",
        "--bounds", "0,255", "--class-names", f"@{tmp_path / 'names.txt'}", "--attack", "linf-pgd", "--epsilon", "25.5",
        "--limit", "20", "--out", str(out)])
    assert rc == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["class_names"] == names and list(result["per_class_flip_rate"]) == names
    assert (out / "flip_matrix.csv").read_text().splitlines()[0].split(",")[1:] == names
    assert result["perturbation_linf"]["max"] <= 25.5 * (1 + 1e-5)
