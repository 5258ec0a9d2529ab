"""fleet's pytest plugin (fleet/testing/) run as a user runs it: pytest sessions of their own (pytester), the
example test file against a lab the plugin starts with `hil up` (--fleet-lab), and a test that fails or is
interrupted (SIGINT) in the middle of an outage, judged by the lab router's ground truth (`hil status`).

The unit part needs no lab: the plugin is inert without its options, its input errors name the file, and the
in-process evidence folds observations into the working server with the store's own rule.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import lab_spec, start_lab
from hil.harness import wait_for

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "test_wan_outage.py"
INNER_TIMEOUT_S = 240       # an inner session: lab start + baseline + an outage of the lab's timers; ends before the test's 300 s


def junit_properties(path: Path) -> dict[str, dict[str, str]]:
    """Test name -> its JUnit properties (name -> value)."""
    return {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")}
            for tc in ET.parse(path).iter("testcase")}


def inner(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    """A user's pytest session in a process of its own (its own signals), the plugin found by its entry point."""
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = INNER_TIMEOUT_S) -> str:
    """The inner session's output once it ended; past `timeout` it is killed and the test fails with its output."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"the inner pytest session did not end within {timeout:g} s:\n{out[-3000:]}") from None


def wire_lab_spec(name: str) -> dict:
    """A lab as a real site has it: no registration syslog line, so its inventory names `capture: router lan0`
    (the per-server evidence the plugin reads). `net` omitted: a free one is taken at start."""
    spec = lab_spec(name, phones=4)
    spec.pop("net", None)
    spec["syslog_registration_line"] = False
    return spec


def wan_ground_truth(lab) -> dict:
    """The lab router's WAN as the lab itself holds it (not as fleet reads it)."""
    return lab.status()["sites"][0]["router"]["wan_state"]


def wan_history(lab) -> list[dict]:
    return lab.status()["sites"][0]["router"]["history"]


def wan_is_up(state: dict) -> bool:
    return state["admin_up"] and not state["drop_all"] and not state["drop_ports"] and not state["rules"] \
        and state["loss"] == 0


# ---------------------------------------------------------------------------------------------- no lab
def test_the_plugin_is_inert_without_its_options(pytester):
    """Loaded by every pytest run of a project with fleet installed: no import of fleet beyond itself, no
    option required, the project's tests unaffected."""
    pytester.makepyfile(test_plain="""
        import sys

        def test_plain():
            loaded = sorted(m for m in sys.modules if m.startswith("fleet"))
            assert loaded == ["fleet", "fleet.testing", "fleet.testing.plugin"], loaded
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "fleet:" not in result.stdout.str()           # no report header either


def test_the_fixtures_skip_their_tests_without_an_inventory(pytester):
    shutil.copy(EXAMPLE, pytester.path / "test_wan_outage.py")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no --fleet-inventory FILE nor --fleet-lab LABFILE given*"])


def test_the_options_are_in_help(pytester):
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(["*--fleet-inventory=FILE*", "*--fleet-site=NAME*", "*--fleet-lab=LABFILE*"])
    markers = pytester.runpytest_inprocess("--markers")
    markers.stdout.fnmatch_lines(["*@pytest.mark.fleet_phones(family=None, model=None)*"])


def test_the_example_uses_only_the_plugins_fixtures():
    """What a user copies needs nothing but fleet installed: its tests ask for the plugin's fixtures only."""
    import ast

    tests = [n for n in ast.parse(EXAMPLE.read_text()).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert len(tests) == 2
    assert {a.arg for t in tests for a in t.args.args} == {"fleet_site", "fleet_phones", "wan_outage"}
    assert all(isinstance(n, (ast.Import, ast.FunctionDef, ast.Expr)) for n in ast.parse(EXAMPLE.read_text()).body)


def _example_site(where: Path, mode: int = 0o600, source: str = "site-uc5.yml") -> Path:
    """examples/site-uc5.yml (two VVX phones, an SNMP router; or `source`) and its secrets file, copied with the
    secrets' mode."""
    inventory = where / "site.yml"
    shutil.copy(ROOT / "examples" / source, inventory)
    secrets = where / "secrets.example.yml"
    shutil.copy(ROOT / "examples" / "secrets.example.yml", secrets)
    secrets.chmod(mode)
    return inventory


def test_a_bad_inventory_fails_its_tests_naming_file_and_line(pytester):
    (pytester.path / "site.yml").write_text("name: x\nsites:\n  - name: hq\n    colour: blue\n")
    pytester.makepyfile(test_site="def test_site(fleet_site):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--fleet-inventory", "site.yml")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "site.yml:" in out and "Traceback" not in out, out


def test_a_secrets_file_others_can_read_is_refused_unless_accepted(pytester):
    inventory = _example_site(pytester.path, mode=0o644)
    pytester.makepyfile(test_site="""
        import pytest

        def test_site(fleet_site):
            assert fleet_site.name == "hq" and len(fleet_site.phones) == 2

        @pytest.mark.fleet_phones(model="VVX 450")
        def test_marker(fleet_phones):
            assert [p.model for p in fleet_phones] == ["VVX 450"]

        @pytest.mark.fleet_phones(family="sip-2.x")
        def test_no_such_phone(fleet_phones):
            raise AssertionError("not reached: no phone fits")
    """)
    refused = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--fleet-inventory", str(inventory))
    refused.assert_outcomes(errors=3)
    refused.stdout.fnmatch_lines(["*readable by its group and others (mode 0644)*--fleet-insecure-secrets*"])
    accepted = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--fleet-inventory", str(inventory),
                                             "--fleet-insecure-secrets", "-rs")
    accepted.assert_outcomes(passed=2, skipped=1)
    accepted.stdout.fnmatch_lines(["*no phone of site hq fits {'family': 'sip-2.x'}*"])


@pytest.fixture
def example_site(tmp_path):
    from fleet.testing.session import open_site

    return open_site(str(_example_site(tmp_path)), None)


def test_an_outage_the_router_cannot_make_is_refused_before_anything_is_touched(example_site):
    # the example's router is 10.40.0.1: nothing may be sent to it (any connection attempt would leave loopback)
    with pytest.raises(ValueError, match=r"wan_outage\(mode='dns-fail'\).*snmp router of site hq makes link-down only"):
        example_site.wan_outage(mode="dns-fail").__enter__()
    with pytest.raises(ValueError, match=r"wan_outage\(duration=.*greater than or equal to 1"):
        example_site.wan_outage(duration=0).__enter__()
    assert example_site.outages == []


def test_a_router_that_cannot_be_reached_was_never_cut_and_is_not_restored(tmp_path):
    """No connection, no cut: the error is the router's, nothing is owed to it and the run says so."""
    from fleet.drivers.errors import DriverError
    from fleet.testing import wan
    from fleet.testing.session import open_site

    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inventory = _example_site(tmp_path, source="site-uc4.yml")
    inventory.write_text(inventory.read_text().replace("address: 10.30.0.1,", f"address: 127.0.0.1, port: {port}, timeout: 2,"))
    site = open_site(str(inventory), "hq")
    runs: list = []
    started = time.monotonic()
    with pytest.raises(DriverError, match="127.0.0.1"):
        with wan.wan_outage(site.inventory, site.secrets, site.site, "drop", 60, keep=runs):
            raise AssertionError("not reached: the cut failed")
    assert time.monotonic() - started < wan.RESTORE_PAUSE_S * wan.RESTORE_TRIES   # no restore was tried
    summary = runs[0].summary()
    assert (summary["cut"], summary["restore"], summary["restored"]) == ("not sent", "not sent", False), summary
    assert summary["ended_by"] in ("DriverError", "DeviceUnreachable", "DeviceTimeout"), summary


def test_evidence_folds_observations_into_the_working_server(example_site):
    """The in-process evidence applies the store's rule (R4) and keeps each observation with the working server,
    in the shape the experiment's measurements read."""
    from fleet.state.observe import Observation
    from fleet.testing.evidence import SiteEvidence

    mac = example_site.phones[0].mac
    ev = SiteEvidence(example_site.inventory, example_site.secrets, example_site.site)
    assert ev.configured[mac] == [1, 2]
    assert ev.working_server(mac) is None
    ev.observe([Observation(mac, 100.0, "wire", server=1, state="registered", code=200),
                Observation(mac, 100.1, "wire", server=2, state="registered", code=200),
                Observation("0004f2ffffff", 100.2, "wire", server=1, state="registered")])   # no phone of the site
    assert ev.working_server(mac) == 1
    ev.observe([Observation(mac, 110.0, "wire", server=1, state="unregistered")])
    assert ev.wait(lambda: ev.working_server(mac) == 2, 1.0)
    assert [o["working_server"] for o in ev.observations(mac)] == [1, 1, 2]
    assert not ev.wait(lambda: ev.working_server(mac) == 1, 0.2)


def test_a_site_without_per_server_evidence_says_so(tmp_path):
    from fleet.testing.evidence import EvidenceUnavailable
    from fleet.testing.session import open_site

    inventory = _example_site(tmp_path)
    inventory.write_text(inventory.read_text().replace("    capture: interface eth1", "    # capture: none"))
    site = open_site(str(inventory), "hq")
    with pytest.raises(EvidenceUnavailable, match="site hq names no per-server evidence source"):
        site.working_server(site.phones[0])


# ---------------------------------------------------------------------------------------------- the lab
@pytest.mark.lab
@pytest.mark.slow
def test_the_example_runs_an_outage_on_a_lab_it_starts_and_its_junit_report_carries_the_evidence(tmp_path):
    """The example, as a user copies it, against `--fleet-lab`: every phone on server 2 during the outage and on
    server 1 after; the JUnit report names the outage, the router's confirmation, and per phone the measured
    failover and recovery with the observations they rest on; the lab is down at the end."""
    shutil.copy(EXAMPLE, tmp_path / "test_wan_outage.py")
    labfile = tmp_path / "lab.yml"
    labfile.write_text(json.dumps(wire_lab_spec("plugin-example")))
    state, junit = tmp_path / "state", tmp_path / "junit.xml"
    proc = inner(["test_wan_outage.py", "--fleet-lab", str(labfile), "--fleet-lab-state", str(state),
                  f"--junitxml={junit}"], tmp_path)
    out = finish(proc)
    assert proc.returncode == 0, out
    assert "2 passed" in out, out
    props = junit_properties(junit)["test_every_phone_fails_over_to_the_gateway_and_back"]
    assert props["fleet.outage.id"].startswith("pytest-") and props["fleet.outage.mode"] == "link-down"
    assert props["fleet.outage.cut"] == "cut" and "armed" in props["fleet.outage.deadman"]
    assert (props["fleet.outage.restore"], props["fleet.outage.restored"]) == ("restored", "True")
    assert props["fleet.outage.leftovers"] == ""
    macs = sorted({name.split(".")[2] for name in props if name.startswith("fleet.phone.")})
    assert len(macs) == 4
    started, ended = float(props["fleet.outage.started"]), float(props["fleet.outage.ended"])
    for mac in macs:
        failover = float(props[f"fleet.phone.{mac}.failover_s"])
        assert 0 < failover <= ended - started
        assert float(props[f"fleet.phone.{mac}.recovery_s"]) >= 0
        evidence = json.loads(props[f"fleet.phone.{mac}.evidence"])
        # the observation that put the phone on server 2 is in its evidence, inside the outage
        assert any(o["working_server"] == 2 and started <= o["t"] <= ended for o in evidence), evidence
        # and the last one has it back on server 1, after it was on server 2 (it may come before `ended`: the
        # router answers a link-down restore once its routes are back, and a phone can be quicker)
        on_2 = max(o["t"] for o in evidence if o["working_server"] == 2)
        assert evidence[-1]["working_server"] == 1 and evidence[-1]["t"] > on_2, evidence
    assert not (state / "control.json").exists(), "the lab the session started is still running"


@pytest.fixture(scope="module")
def wire_lab(tmp_path_factory):
    lab = start_lab(tmp_path_factory.mktemp("plugin-lab"), wire_lab_spec("plugin-faults"))
    try:
        yield lab
    finally:
        lab.down()


MID_OUTAGE = """
import time


def test_fails_mid_outage(fleet_site, fleet_phones, wan_outage):
    with wan_outage(mode="drop", duration=120) as outage:
        fleet_site.wait_for_server(fleet_phones, server=2, timeout=fleet_site.timeout_for("failover"))
        assert False, "a failure in the middle of the outage"


def test_interrupted_mid_outage(fleet_site, wan_outage, tmp_path_factory):
    with wan_outage(mode="link-down", duration=120) as outage:
        print("CUT", outage.id, flush=True)
        time.sleep(110)
"""


@pytest.mark.lab
@pytest.mark.slow
def test_a_test_failing_mid_outage_leaves_the_wan_restored(wire_lab, tmp_path):
    (tmp_path / "test_mid.py").write_text(MID_OUTAGE)
    junit, started = tmp_path / "junit.xml", time.time()
    proc = inner(["test_mid.py::test_fails_mid_outage", "--fleet-inventory", str(wire_lab.inventory),
                  f"--junitxml={junit}"], tmp_path)
    out = finish(proc)
    assert proc.returncode == 1 and "1 failed" in out and "a failure in the middle of the outage" in out, out
    truth = wan_ground_truth(wire_lab)
    assert wan_is_up(truth), truth
    props = junit_properties(junit)["test_fails_mid_outage"]
    assert props["fleet.outage.mode"] == "drop" and props["fleet.outage.restored"] == "True"
    assert props["fleet.outage.ended_by"] == "AssertionError"
    # the router's own history: the drop rule went on during the test and came off again
    changes = [h["change"] for h in wan_history(wire_lab) if h["t"] >= started]
    assert any(c.startswith("rule added") for c in changes) and any(c.startswith("rule removed") for c in changes), changes


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_mid_outage_leaves_the_wan_restored(wire_lab, tmp_path, signum):
    """Ctrl-C (and a service manager's SIGTERM, which pytest alone would die of) in the middle of an outage."""
    (tmp_path / "test_mid.py").write_text(MID_OUTAGE)
    junit = tmp_path / "junit.xml"
    proc = inner(["test_mid.py::test_interrupted_mid_outage", "-s", "--fleet-inventory", str(wire_lab.inventory),
                  f"--junitxml={junit}"], tmp_path)
    try:
        wait_for(lambda: not wan_ground_truth(wire_lab)["admin_up"], 150, "the inner test's WAN cut (lab ground truth)",
                 step=0.2)
        proc.send_signal(signum)
        signalled = time.time()
        out = finish(proc, 60)
    finally:
        if proc.poll() is None:       # the wait failed: stop the session the way that restores, then for good
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == 2 and f"Interrupted: {name}" in out, out     # pytest's exit code: interrupted
    truth = wan_ground_truth(wire_lab)
    assert wan_is_up(truth), truth
    # restored by the interrupted test itself, not by the router's dead-man (armed for 120 s): the link came up
    # again within the 60 s the signal was given to end the session
    changes = [(h["t"], h["change"]) for h in wan_history(wire_lab) if h["t"] >= signalled - 60]
    down = [t for t, c in changes if c == "link down"]
    up = [t for t, c in changes if c == "link up" and down and t > down[-1]]
    assert down and up and up[0] - signalled < 60, changes
    props = junit_properties(junit).get("test_interrupted_mid_outage", {}) if junit.exists() else {}
    # pytest writes the report of an interrupted session too; the outage's restore is recorded there when it is
    if props:
        assert props["fleet.outage.restored"] == "True" and props["fleet.outage.ended_by"] == name, props


@pytest.mark.lab
@pytest.mark.slow
def test_a_call_placed_by_the_helper_is_seen_going_to_the_working_server(wire_lab):
    """`fleet_site.call`: the phone dials through its REST API and the wire evidence says where the INVITE went."""
    from fleet.testing.session import open_site

    site = open_site(str(wire_lab.inventory), None)
    try:
        phone = next(p for p in site.phones if p.family.rest)
        site.wait_for_server([phone], server=1, timeout=site.timeout_for("refresh", [phone]))
        seen = site.call(phone, "2000", timeout=site.timeout_for("refresh", [phone]))
        assert seen is not None and seen["kind"] == "call" and seen["server"] == 1, seen
    finally:
        site.close()
