"""The Redis key table: one table, the same in the store's docstring and in docs/architecture.md, listing every
key family `store.Keys` builds; and no key name is built outside the store. Unit tests, no Redis."""
from __future__ import annotations

import inspect
import re

from conftest import ROOT
from fleet.state import store


def _table(text: str) -> list[str]:
    """The lines of the first Markdown table in `text`."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _docs_table() -> list[str]:
    page = (ROOT / "docs/architecture.md").read_text()
    return _table(page.split("\n## Redis keys\n", 1)[1].split("\n## ", 1)[0])


def _families(rows: list[str]) -> set[str]:
    return {m.group(1) for r in rows if (m := re.match(r"\| `([^`]+)`", r))}


def _built_by_keys() -> set[str]:
    """Every key name Keys makes, as a pattern of the table (`phone:{mac}`), without the prefix."""
    out = set()
    for name, value in vars(store.Keys).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod):
            fn = value.__func__
            params = list(inspect.signature(fn).parameters)
            value = fn(*[f"{{{p}}}" for p in params])
        if isinstance(value, str):
            out.add(value.removeprefix(store.P))
    return out


def test_the_store_docstring_and_the_architecture_page_hold_the_same_table():
    in_store = _table(store.__doc__)
    assert len(in_store) > 20 and in_store == _docs_table()


def test_every_key_the_store_builds_is_in_the_table_and_nothing_else():
    documented = {f.replace("{exp}", "{id}").replace("{rid}", "{id}").replace("{outage_id}", "{id}").replace("{incident_id}", "{id}")
                  for f in _families(_table(store.__doc__))}
    built = {k.replace("{exp}", "{id}").replace("{rid}", "{id}").replace("{outage_id}", "{id}").replace("{incident_id}", "{id}")
             for k in _built_by_keys()}
    assert built == documented, (sorted(built - documented), sorted(documented - built))


def test_no_key_name_is_built_outside_the_store():
    """`fleet:` followed by a key family appears only in fleet/state/store.py (tests and benchmarks use Store methods)."""
    families = sorted({f.split(":")[0].split("{")[0] for f in _families(_table(store.__doc__))})
    pattern = re.compile(r"fleet:(%s)\b" % "|".join(map(re.escape, families)))
    offenders = []
    for folder in ("fleet", "hil", "bench", "tests", "soundpoint"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "fleet/state/store.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_inside_the_store_only_keys_builds_a_name():
    """A new key family is added to `Keys` and the table, not written as an f-string in some method."""
    source = (ROOT / "fleet/state/store.py").read_text()
    start = source.index("\nclass Keys:")
    end = source.index("\nK = Keys")
    outside = source[:start] + source[end:]
    loose = [line.strip() for line in outside.splitlines() if 'f"{P}' in line or "f'{P}" in line]
    assert not loose, loose
