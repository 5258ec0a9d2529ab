"""The conformance corpus itself: every entry loads, names its source or says why it has none."""
from __future__ import annotations

import subprocess
import sys

import pytest

from soundpoint import conformance, families


def test_every_entry_loads_and_is_well_formed():
    entries = conformance.entries()
    assert entries, "the corpus is empty"
    for e in entries:
        assert all(f in families.NAMES for f in e.families), f"{e.path}: unknown family in {e.families}"
        if e.status == "confirmed":
            assert e.sources and all(s.ref for s in e.sources), f"{e.path}: confirmed without a source"
        else:
            assert e.note, f"{e.path}: {e.status} entry without a note"
        if e.variant_of:
            conformance.get(e.variant_of)


@pytest.mark.parametrize("version,spec,inside", [
    ("5.8.0.12345", ">=5.8", True), ("5.7.2", ">=5.8", False), ("5.6.3", "5.4-5.6", True),
    ("5.3.1", "<5.4", True), ("5.4.0", "<5.4", False), ("4.0.15", "any", True), ("3.1.2", "3.0-3.3, 4.0", True), ("3.4.1", "3.0-3.3, 4.0", False),
    ("4.0.1", "3.0-3.3, 4.0", True),
])
def test_version_ranges(version, spec, inside):
    assert conformance.version_in(version, spec) is inside


def test_the_unconfirmed_listing_runs_and_names_only_unconfirmed_entries():
    out = subprocess.run([sys.executable, "-m", "soundpoint.conformance", "unconfirmed", "--json"],
                         capture_output=True, text=True, check=True).stdout
    import json
    listed = json.loads(out)
    assert {e["id"] for e in listed} == {e.id for e in conformance.entries() if e.status != "confirmed"}


def test_the_corpus_holds_at_least_sixty_answers_each_with_its_source_or_a_note():
    entries = conformance.entries()
    assert len(entries) >= 60, len(entries)
    assert all(e.sources or e.note for e in entries)


def test_every_entry_names_at_least_one_source_it_was_read_against():
    """Issue 16: each entry names its source. An unconfirmed one names the nearest source read (silent or related,
    its `says` stating what it does and does not show), so "no source" is never an empty list."""
    bare = sorted(e.id for e in conformance.entries() if not e.sources)
    assert bare == [], f"entries without a source: {bare}"
    for e in conformance.entries():
        assert all(s.ref.strip() and s.says.strip() for s in e.sources), f"{e.path}: a source without ref or says"


def test_the_readme_says_per_family_what_the_corpus_confirms():
    """README.md's table between the corpus-summary markers is the corpus's own summary, so it cannot go stale."""
    from pathlib import Path

    from soundpoint.conformance.__main__ import markdown_summary

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = "<!-- corpus-summary -->\n", "<!-- /corpus-summary -->"
    block = text[text.index(start) + len(start):text.index(end)].strip()
    assert block == markdown_summary(conformance.entries()).strip(), \
        "README.md's corpus table is stale: paste `python -m soundpoint.conformance summary --markdown` between its markers"
