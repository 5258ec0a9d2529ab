"""The annotated example inventories (one per firmware family) stay valid as the schema moves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_fleet

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("site-*.yml"))


def test_there_is_one_example_per_family():
    from soundpoint import families

    named = {p.stem.removeprefix("site-") for p in EXAMPLES}
    assert len(EXAMPLES) == len(families.NAMES) == 4, named


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_inventory_is_valid_and_its_family_is_the_one_it_says(path, redis_url):
    # the example secrets file is a checked-in template (git keeps no 0600): accepted knowingly here
    out = run_fleet(["--insecure-secrets", "inventory", "check", str(path), "--json"], redis_url)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["valid"] and doc["phones"] == 2
    from fleet.config import inventory

    inv = inventory.load(path)
    stated = path.read_text().split("firmware_family:", 1)[1].split()[0]
    assert {p.family.name for s in inv.sites for p in s.phones} == {stated}
