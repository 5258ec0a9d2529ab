"""hil/ imports nothing of fleet: the lab stands beside the controller and shares only soundpoint and sipwire.

Read from the source (ast), so an import inside a function or behind a condition counts as much as one at the
top, and `importlib.import_module("fleet...")` too. hil/harness.py is the documented exception: the bridge that
starts a controller against a lab.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HIL = ROOT / "hil"
BRIDGE = HIL / "harness.py"
FORBIDDEN = "fleet"


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved against `package`."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            found.append((node.lineno, node.args[0].value))
    return found


def _is_fleet(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


HIL_FILES = sorted(p for p in HIL.rglob("*.py") if p != BRIDGE)


@pytest.mark.parametrize("path", HIL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hil_module_imports_nothing_of_fleet(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in imported_modules(path, package_of(path))
           if _is_fleet(name)]
    assert not bad, "hil imports only soundpoint and sipwire (hil/harness.py excepted):\n" + "\n".join(bad)


def test_the_checker_sees_imports_in_functions_relative_ones_and_import_module(tmp_path):
    """The check itself: each way of reaching fleet is found, and hil's own relative imports resolve into hil."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom fleet.config import validate\n"
                     "def f():\n    import fleet.cli\n    from .. import labfile\n    from . import plan\n"
                     "    importlib.import_module('fleet.worker')\n    __import__('fleet')\n")
    names = [name for _, name in imported_modules(probe, "hil.netns")]
    assert names == ["os", "fleet.config", "fleet.cli", "hil", "hil.netns", "fleet.worker", "fleet"], names
    assert [n for n in names if _is_fleet(n)] == ["fleet.config", "fleet.cli", "fleet.worker", "fleet"]


def test_the_bridge_is_the_only_exception_and_still_exists():
    """harness.py is excepted by name: if it moves, this test says so instead of silently checking nothing."""
    assert BRIDGE.exists()
    assert len(HIL_FILES) > 20
