"""docs/architecture.md names only what exists: every path, every file name and every dotted module it cites.

The page is the newcomer's map; a map naming a module that was moved or never existed sends them the wrong way
(the page once named a `phone_ops.py` nobody had written)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
CODE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^[\w.-]+(/[\w.<>-]*)+$")
FILE = re.compile(r"^[\w-]+\.(py|yml|md|toml)$")
DOTTED = re.compile(r"^(fleet|hil|soundpoint|sipwire)(\.\w+)+")
PACKAGES = ("fleet", "hil", "soundpoint", "sipwire", "tests", "bench", "docs", "examples")


def cited() -> list[str]:
    return CODE.findall(PAGE.read_text())


def missing_paths(names: list[str]) -> list[str]:
    """Paths from the repository's root; a bare folder (`wire/`) must exist somewhere in our packages."""
    folders = {p.name for pkg in PACKAGES for p in (ROOT / pkg).rglob("*") if p.is_dir()}
    out = []
    for name in names:
        if not PATH.match(name) or "<" in name:
            continue
        if (ROOT / name.rstrip("/")).exists():
            continue
        if name.endswith("/") and name.count("/") == 1 and name[:-1] in folders:
            continue
        out.append(name)
    return out


def missing_files(names: list[str]) -> list[str]:
    every = {p.name for pkg in PACKAGES for p in (ROOT / pkg).rglob("*") if p.is_file()} | \
            {p.name for p in ROOT.iterdir() if p.is_file()}
    return [n for n in names if FILE.match(n) and n not in every]


def _source(parts: list[str]) -> str | None:
    """The source of module `parts`, or None when it is no module of ours."""
    module = (ROOT / Path(*parts)).with_suffix(".py")
    package = ROOT / Path(*parts) / "__init__.py"
    return module.read_text() if module.is_file() else package.read_text() if package.is_file() else None


def named_strings() -> set[str]:
    """Dotted names the code spells as strings (Celery task and queue names such as "fleet.router_outage")."""
    return {m for p in (ROOT / "fleet").rglob("*.py") for m in re.findall(r'"(fleet\.\w+)"', p.read_text())}


def missing_modules(names: list[str]) -> list[str]:
    """Dotted names: the longest prefix that is a module, then at most an attribute that module defines; or a
    task or queue name the code spells."""
    strings = named_strings()
    out = []
    for name in names:
        m = DOTTED.match(name)
        if not m or FILE.match(name) or name in strings:
            continue
        parts = m.group(0).split(".")
        for i in range(len(parts), 0, -1):
            source = _source(parts[:i])
            if source is not None:
                break
        rest = parts[i:]
        if rest and not re.search(rf"\b{re.escape(rest[0])}\b", source or ""):
            out.append(name)
    return out


def test_every_path_the_page_names_exists():
    assert missing_paths(cited()) == []


def test_every_file_name_the_page_names_exists():
    assert missing_files(cited()) == []


def test_every_module_the_page_names_exists():
    assert missing_modules(cited()) == []


def test_the_checks_catch_a_name_that_does_not_exist():
    assert missing_paths(["fleet/phone_ops.py", "fleet/evidence/sources/", "fleet/cli/"]) == ["fleet/phone_ops.py"]
    assert missing_files(["phone_ops.py", "runner.py"]) == ["phone_ops.py"]
    assert missing_modules(["fleet.tasks", "fleet.state.observe.Observation", "fleet.phones.BACKENDS"]) == ["fleet.tasks"]
