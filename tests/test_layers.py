"""The package reads in one direction: data → models → attacks → analysis → runs → gate / reports / bench → cli and
the pytest plugin. Checked by reading every import of every module (including imports inside functions and under
TYPE_CHECKING), so the rule cannot quietly rot."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import labelflip_models
from labelflip_models.cli import build_parser
from labelflip_models.gate.config import FLAGS, OPTIONS

PACKAGE = Path(labelflip_models.__file__).parent
# Lowest first. A module may import from its own unit and from units of earlier layers; units that share a layer
# are siblings and import nothing from each other. A unit is a top-level module or package (or, for the plugin, one
# module of gate/); a module belongs to the longest unit that prefixes its name.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("provenance", "devices", "storage"),
    ("data",),
    ("models",),
    ("attacks",),
    ("analysis",),
    ("runs",),
    ("gate", "reports", "bench"),
    ("gate.fixtures",),
    ("cli", "gate.plugin"),
]
# The layers that make up the library: they name their parameters, never a front end's options.
LIBRARY = {unit for layer in LAYERS[:LAYERS.index(("runs",)) + 1] for unit in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    units = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    if not units:
        raise AssertionError(f"labelflip_models.{module} belongs to no layer; add it to LAYERS in {__file__}")
    return max(units, key=len)


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module inside labelflip_models) for every import of the package in the file."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("labelflip_models"):
                target = node.module.removeprefix("labelflip_models").lstrip(".")
            else:
                continue
            # `from . import x` and `from pkg import module` import submodules: judge each by its own unit.
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            found += [(node.lineno, n if (PACKAGE / n.replace(".", "/")).with_suffix(".py").exists()
                       or (PACKAGE / n.replace(".", "/")).is_dir() else target) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("labelflip_models").lstrip("."))
                      for a in node.names if a.name.startswith("labelflip_models")]
    return [(line, target) for line, target in found if target]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for path in MODULES:
        if path != PACKAGE / "__init__.py":
            _unit(_module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    module = _module_name(path)
    if not module:
        return
    unit = _unit(module)
    wrong = []
    for line, target in _imports(path):
        other = _unit(target)
        if other != unit and _layer(other) >= _layer(unit):
            wrong.append(f"line {line}: {module} ({unit}, layer {_layer(unit)}) imports {target} "
                         f"({other}, layer {_layer(other)})")
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_wrong_import(tmp_path, monkeypatch):
    """The checker itself: an upward import and a sibling import are both found."""
    fake = tmp_path / "labelflip_models"
    (fake / "data").mkdir(parents=True)
    (fake / "gate").mkdir()
    for name in ("__init__.py", "data/__init__.py", "gate/__init__.py", "reports.py"):
        (fake / name).write_text("")
    (fake / "data" / "loader.py").write_text("from ..gate import cases\n")
    (fake / "gate" / "cases.py").write_text("def f():\n    from labelflip_models.reports import write\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="data.loader .*imports gate.cases"):
        test_imports_point_down(fake / "data" / "loader.py")
    with pytest.raises(AssertionError, match="gate.cases .*imports reports"):
        test_imports_point_down(fake / "gate" / "cases.py")


def _front_end_options() -> set[str]:
    parser = build_parser()
    names = {s for a in parser._actions for s in a.option_strings}
    for sub in parser._subparsers._group_actions[0].choices.values():
        names |= {s for a in sub._actions for s in a.option_strings}
    names |= {f"--labelflip-{name}" for name, *_ in OPTIONS} | {f"--labelflip-{name}" for name, _ in FLAGS}
    return names - {"-h", "--help"}


@pytest.mark.parametrize("path", [p for p in MODULES if _module_name(p) and _unit(_module_name(p)) in LIBRARY],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_messages_name_no_front_end_option(path):
    """Library errors name parameters (`arch`); the CLI and the plugin phrase them as their own options."""
    options = _front_end_options()
    assert "--arch" in options and "--labelflip-arch" in options
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [(node.lineno, word) for word in node.value.replace("/", " ").replace(",", " ").split()
                      if word.rstrip(").;:") in options]
    assert not found, f"{path.name} names front-end options: {found}"
