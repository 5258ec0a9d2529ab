"""fleet's pytest plugin (entry point `pytest11`: fleet): fixtures for users' own HIL tests, labgrid's plugin as model.

Command line (labgrid's `--lg-env` is ours `--fleet-inventory`):
  --fleet-inventory FILE    the site inventory (its secrets file as the inventory names it, or FLEET_SECRETS_FILE)
  --fleet-site NAME         the site the tests run against (default: the inventory's only site)
  --fleet-lab LABFILE       start this virtual lab with `hil up` for the session (its inventory is then used)
  --fleet-lab-state DIR     the lab's state directory (default: a directory of the session's own)
  --fleet-insecure-secrets  accept a secrets file others can read (as `fleet --insecure-secrets`)

Fixtures: `fleet_site` (session: fleet.testing.site.FleetSite), `fleet_phones` (the site's phones, narrowed by the
test's `fleet_phones` marker), `wan_outage` (a factory of WAN-outage context managers whose runs land in the
test's JUnit properties). Marker: `@pytest.mark.fleet_phones(family="uc-5.x", model="VVX 410")`, each one name or
a list. Without --fleet-inventory or --fleet-lab the fixtures skip their tests, saying which option is missing.

Inert unless used: this module imports pytest only; the rest of fleet is imported by the fixtures, on first use,
so a project that never asks for them (fleet's own test suite among them) pays nothing but three options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

MARKER = "fleet_phones"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fleet", "fleet: hardware-in-the-loop tests on a SoundPoint site or the virtual lab")
    group.addoption("--fleet-inventory", metavar="FILE", help="the site inventory the fleet fixtures use")
    group.addoption("--fleet-site", metavar="NAME", help="the inventory's site to test (default: its only site)")
    group.addoption("--fleet-lab", metavar="LABFILE", help="start this virtual lab (`hil up`) for the session")
    group.addoption("--fleet-lab-state", metavar="DIR", help="the lab's state directory (default: a session tmp dir)")
    group.addoption("--fleet-insecure-secrets", action="store_true", default=False,
                    help="accept a secrets file its group or others can read")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(family=None, model=None): run on the site's phones of this firmware "
                                       "family and/or model only (fixture fleet_phones; each a name or a list)")


def pytest_report_header(config: pytest.Config) -> str | None:
    inventory, lab = config.getoption("--fleet-inventory"), config.getoption("--fleet-lab")
    if not inventory and not lab:
        return None
    return f"fleet: {'lab ' + lab if lab else 'inventory ' + inventory}, site {config.getoption('--fleet-site') or '(the only one)'}"


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def fleet_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The site under test (fleet.testing.site.FleetSite), for the whole session; its evidence stops at the end
    and a lab started by --fleet-lab goes down."""
    config = request.config
    inventory_path, labfile = config.getoption("--fleet-inventory"), config.getoption("--fleet-lab")
    if not inventory_path and not labfile:
        pytest.skip("fleet: no --fleet-inventory FILE nor --fleet-lab LABFILE given")
    if inventory_path and labfile:
        _fail("fleet: give --fleet-inventory (a site) or --fleet-lab (a lab whose inventory is used), not both")
    # imported here, not at the top: the plugin stays inert (no import of fleet) for runs that never use it
    from fleet.testing import lab as lab_mod  # in-function: inert plugin
    from fleet.testing.session import SessionError, open_site  # in-function: inert plugin
    lab = None
    if labfile:
        state = Path(config.getoption("--fleet-lab-state") or tmp_path_factory.mktemp("fleet-lab") / "state")
        lab = lab_mod.SessionLab(Path(labfile).resolve(), state.resolve(), state.resolve().parent / "inventory.yml")
        try:
            lab.up()
        except lab_mod.LabStartError as exc:
            _fail(f"fleet: {exc}")
        inventory_path = str(lab.inventory)
    try:
        try:
            site = open_site(inventory_path, config.getoption("--fleet-site"), config.getoption("--fleet-insecure-secrets"))
        except SessionError as exc:
            _fail(f"fleet: {exc}")
        try:
            yield site
        finally:
            site.close()
    finally:
        if lab is not None:
            lab.down()


@pytest.fixture
def fleet_phones(request: pytest.FixtureRequest, fleet_site: Any) -> list:
    """The site's phones, narrowed by the test's `fleet_phones(family=..., model=...)` marker; the test is skipped
    when no phone fits."""
    phones = marked_phones(request, fleet_site)
    if not phones:
        marker = request.node.get_closest_marker(MARKER)
        pytest.skip(f"fleet: no phone of site {fleet_site.name} fits {marker.kwargs if marker else 'this test'}")
    return phones


def marked_phones(request: pytest.FixtureRequest, site: Any) -> list:
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        return list(site.phones)
    unknown = set(marker.kwargs) - {"family", "model"}
    if unknown or marker.args:
        _fail(f"fleet: @pytest.mark.{MARKER} takes family= and model= only (got {sorted(unknown) or marker.args})")
    return site.select(**marker.kwargs)


@pytest.fixture
def wan_outage(request: pytest.FixtureRequest, fleet_site: Any):
    """`with wan_outage(mode="link-down", duration=300) as run:` cuts the site's WAN through its router, with the
    router's dead-man armed for `duration` seconds, and restores it on leaving the block, whatever ends it (a
    failed assertion, an exception, Ctrl-C, SIGTERM, SIGHUP). At the test's end each run's outage id, the router's
    answers, each phone's measured failover and recovery and its evidence go into the JUnit report as
    properties (`fleet.outage.*`, `fleet.phone.<mac>.*`)."""
    runs_before = len(fleet_site.outages)
    yield fleet_site.wan_outage
    phones = marked_phones(request, fleet_site)
    for run in fleet_site.outages[runs_before:]:
        request.node.user_properties.extend(fleet_site.report(run, phones))
