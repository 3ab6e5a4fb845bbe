"""CIFAR-10 in the gate: both reference models enter the parameterisation, the real-data cases skip with their
reason when the data is absent (or fail under --labelflip-require-data), and the whole life cycle runs on
generated files in the real on-disk format."""

from pathlib import Path

import pytest

from labelflip_models.gate.profiles import REFERENCE_ARCHS, cases, get_profile

from .helpers import GATE_FILE

GATE_FILES = {"test_labelflip": GATE_FILE}


def test_cifar_cases_cover_both_reference_models_and_keep_other_ids():
    ids = [c.id for c in cases(get_profile("cifar"))]
    assert REFERENCE_ARCHS["cifar-10"] == ("cw-cifar", "preact-resnet18")
    assert "cifar-10-fgsm-eps0.02" in ids and "cifar-10-preact-resnet18-fgsm-eps0.02" in ids
    # Per model: FGSM, L∞ PGD and L∞ AutoAttack at 4 ε each, and L2 DeepFool.
    assert len(ids) == 2 * (4 + 4 + 4 + 1) and len(set(ids)) == len(ids)
    resnet = next(c for c in cases(get_profile("cifar")) if c.arch == "preact-resnet18" and c.minimal)
    assert resnet.baseline_path(Path("b"), ".json") == Path("b/cifar/cifar-10-preact-resnet18/l2-deepfool-min.json")
    # A user's model stands in for the dataset's default model only.
    assert {c.arch for c in cases(get_profile("cifar"), own_model=True)} == {""}
    # Datasets with one reference model keep their ids and baseline folders.
    smoke = cases(get_profile("smoke"))
    assert all(c.arch == "" for c in smoke) and "mnist-5k-fgsm-eps0.1" in [c.id for c in smoke]


def test_paper_profile_includes_cifar():
    assert "cifar-10" in get_profile("paper").datasets


def _cifar_gate(pytester_gate, monkeypatch, *args):
    monkeypatch.delenv("LABELFLIP_DATA_DIR", raising=False)
    pytester_gate.makepyfile(**GATE_FILES)
    return pytester_gate.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", "-rs",
                                              "--labelflip-profile", "cifar", *args)


def test_without_the_data_every_cifar_case_skips_with_how_to_get_it(pytester_gate, monkeypatch):
    result = _cifar_gate(pytester_gate, monkeypatch)
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) > 100 and "passed" not in outcomes and "failed" not in outcomes
    result.stdout.fnmatch_lines(["*cifar-10 not found*download cifar-10-python.tar.gz from "
                                 "https://www.cs.toronto.edu/~kriz/cifar.html*--labelflip-require-data turns this "
                                 "skip into a failure*"])


def test_require_data_turns_the_skips_into_failures(pytester_gate, monkeypatch):
    result = _cifar_gate(pytester_gate, monkeypatch, "--labelflip-require-data")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", outcomes.get("error", 0)) > 100
    assert "skipped" not in outcomes
    result.stdout.fnmatch_lines(["*--labelflip-require-data: cifar-10 not found*"])


# A small profile for generated data: the real profiles need 100 test images per class.
GENERATED_PROFILE = """
from labelflip_models.gate import profiles

profiles.PROFILES["cifar-generated"] = profiles.Profile(
    "cifar-generated", ("cifar-10",), (profiles.AttackSpec("fgsm", (0.05,)), profiles.AttackSpec("l2-deepfool", None)),
    per_class=5, noise_samples=200)
"""


@pytest.mark.slow
def test_gate_life_cycle_on_generated_cifar_files(pytester_gate, monkeypatch, tmp_path):
    """Both reference models train with the CPU recipes, baselines are regenerated, the gate passes on them, and
    the session report has a section per model."""
    from .test_cifar10_data import write_cifar

    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n=120, learnable=True)  # enough to learn: 600 images
    monkeypatch.setenv("LABELFLIP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LABELFLIP_CACHE_DIR", str(tmp_path / "cache"))
    pytester_gate.makeconftest(GENERATED_PROFILE)
    pytester_gate.makepyfile(**GATE_FILES)
    args = ["-p", "no:xdist", "-p", "no:cacheprovider", "--labelflip-profile", "cifar-generated",
            "--labelflip-baselines", str(tmp_path / "baselines"), "--labelflip-require-data"]
    regen = pytester_gate.runpytest_subprocess(*args, "--labelflip-regen")
    assert regen.ret == 0, regen.stdout.str()[-3000:]
    written = sorted(str(p.relative_to(tmp_path / "baselines")) for p in (tmp_path / "baselines").rglob("*.json"))
    assert written == ["cifar-generated/cifar-10-preact-resnet18/fgsm-eps0.05.json",
                       "cifar-generated/cifar-10-preact-resnet18/l2-deepfool-min.json",
                       "cifar-generated/cifar-10/fgsm-eps0.05.json", "cifar-generated/cifar-10/l2-deepfool-min.json",
                       "cifar-generated/cifar-10/white-noise.json"]
    gate = pytester_gate.runpytest_subprocess(*args, "--labelflip-report", str(tmp_path / "report"))
    assert gate.ret == 0, gate.stdout.str()[-3000:]
    assert gate.parseoutcomes()["passed"] >= 40  # the rest skip where 5 images per class give no bound
    heatmaps = sorted(p.name for p in (tmp_path / "report" / "heatmaps").iterdir())
    assert heatmaps == ["cifar-10-fgsm-eps0.05.png", "cifar-10-l2-deepfool-epsmin.png",
                        "cifar-10-preact-resnet18-fgsm-eps0.05.png", "cifar-10-preact-resnet18-l2-deepfool-epsmin.png"]
    sidecars = [p.read_text() for p in (tmp_path / "cache" / "models").rglob("*.json")]
    assert len(sidecars) == 2 and any('"preact-resnet18"' in s and "0.4914" in s for s in sidecars)
