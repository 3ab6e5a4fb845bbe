"""The documentation names only options that exist, and lists all of them: the example CI workflow, the README's
options table and the ini-key table of docs/gate.md."""

import re
from pathlib import Path

import pytest
import yaml

from labelflip_models.gate.config import FLAGS, OPTIONS
from labelflip_models.gate.session import INI_KEYS

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "docs" / "ci" / "github-actions.yml"
COMMAND_LINE = {f"--labelflip-{name}" for name, *_ in OPTIONS + FLAGS}


def _named(text: str) -> tuple[set[str], set[str]]:
    """(--labelflip-* options, labelflip_* ini keys) named in the text."""
    return (set(re.findall(r"--labelflip-[a-z-]*[a-z]", text)),
            set(re.findall(r"\blabelflip_[a-z_]*[a-z]\b", text)) - {"labelflip_models"})


def test_example_workflow_is_valid_and_names_real_options():
    text = WORKFLOW.read_text()
    workflow = yaml.safe_load(text)
    steps = workflow["jobs"]["labelflip"]["steps"]
    # PyYAML reads the key `on` as True (YAML 1.1).
    assert set(workflow.get("on", workflow.get(True))) == {"push", "pull_request"}
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert {"actions/checkout", "actions/setup-python", "actions/cache", "actions/upload-artifact"} <= set(uses)
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    cache_dir = workflow["jobs"]["labelflip"]["env"]["LABELFLIP_CACHE_DIR"]
    assert cache_dir.endswith("/" + cache["with"]["path"])
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "pytest robustness_tests" in runs and "GITHUB_STEP_SUMMARY" in runs
    options, keys = _named(text)
    assert options and options <= COMMAND_LINE, options - COMMAND_LINE
    assert keys and keys <= set(INI_KEYS), keys - set(INI_KEYS)
    # The config section it expects parses as TOML.
    tomllib = pytest.importorskip("tomllib")
    section = "\n".join(line.removeprefix("#").strip() for line in text.splitlines()
                        if re.match(r"#\s+(\[tool|labelflip_)", line))
    assert set(tomllib.loads(section)["tool"]["pytest"]["ini_options"]) <= set(INI_KEYS)


@pytest.mark.parametrize("page", ["README.md", "docs/gate.md"])
def test_option_tables_list_every_option_and_ini_key(page):
    # Rows whose first two cells are an option and its ini key, in either order.
    pairs = re.findall(r"^\| `(--labelflip-[a-z-]+|labelflip_[a-z_]+)` \| `(labelflip_[a-z_]+|--labelflip-[a-z-]+)` \|",
                       (REPO / page).read_text(), re.M)
    options, keys = _named("\n".join(" ".join(pair) for pair in pairs))
    assert options == COMMAND_LINE and keys == set(INI_KEYS)


@pytest.mark.parametrize("page", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
                         + ["README.md"])
def test_docs_name_only_real_options(page):
    options, _ = _named((REPO / page).read_text())
    assert options <= COMMAND_LINE, options - COMMAND_LINE
