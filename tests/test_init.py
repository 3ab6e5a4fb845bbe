"""`labelflip init`: the one generated file a repository needs, and the config section it prints."""

from pathlib import Path

import pytest

from labelflip_models.gate.scaffold import TEST_FILE, TEST_FILE_NAME
from labelflip_models.gate.session import INI_KEYS

from .helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def _section(out: str) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    start = out.index("[tool.pytest.ini_options]")
    return tomllib.loads(out[start:out.index("\n\n", start)])["tool"]["pytest"]["ini_options"]


def test_this_repository_collects_the_gate_through_the_generated_file():
    assert (REPO / "robustness_tests" / TEST_FILE_NAME).read_text() == TEST_FILE


def test_init_writes_the_test_file_and_prints_the_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    status, out, err = run_cli(capsys, ["init", "--model", "model.pt", "--dataset", "mnist-5k"])
    assert status == 0, err
    assert (tmp_path / "robustness_tests" / TEST_FILE_NAME).read_text() == TEST_FILE
    section = _section(out)
    assert section == {"labelflip_profile": "smoke", "labelflip_model": "model.pt", "labelflip_dataset": "mnist-5k",
                       "labelflip_baselines": "robustness_tests/baselines", "labelflip_require_data": True}
    assert set(section) <= set(INI_KEYS)
    assert "--labelflip-regen" in out
    # Again: nothing to change.
    status, out, _ = run_cli(capsys, ["init"])
    assert status == 0 and out.startswith("up to date: robustness_tests/test_labelflip.py")
    assert _section(out) == {"labelflip_profile": "smoke", "labelflip_require_data": True}
    assert "--labelflip-regen" not in out


def test_init_keeps_a_different_file_unless_forced(capsys, tmp_path):
    target = tmp_path / "gate" / TEST_FILE_NAME
    target.parent.mkdir()
    target.write_text("# mine\n")
    status, _, err = run_cli(capsys, ["init", "--dir", str(tmp_path / "gate")])
    assert status == 2 and f"{target} exists with other content; pass --force to overwrite it" in err
    assert target.read_text() == "# mine\n"
    status, _, _ = run_cli(capsys, ["init", "--dir", str(tmp_path / "gate"), "--force"])
    assert status == 0 and target.read_text() == TEST_FILE
    assert [p.name for p in target.parent.iterdir()] == [TEST_FILE_NAME]  # no temp files left


def test_init_bad_input_is_one_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "afile").write_text("")
    for argv, message in [
        (["init", "--model", "missing.pt", "--dataset", "mnist-5k"], "--model: no model file at missing.pt"),
        (["init", "--model", "model.pt"], "--model needs --dataset"),
        (["init", "--arch", "cw-mnist"], "--arch describes a --model; none given"),
        (["init", "--dir", "afile"], "afile exists and is not a directory"),
        (["init", "--profile", "paper"], "profile 'paper' ships no reference baselines (those of quick, smoke do): "
                                         "name the folder to record them in with --baselines DIR"),
    ]:
        status, _, err = run_cli(capsys, argv)
        assert status == 2 and err.startswith(f"labelflip: error: {message}") and err.count("\n") == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "model.pt"]
