"""Incidents stored in a real Redis by the detector (fleet.evidence.incidents into fleet.state.incidents), read back
by `fleet incident list | show` and `fleet status`; the lab test (test_experiment_e2e) makes one from a real cut."""
from __future__ import annotations

import json

from conftest import run_fleet, unique_id
from fleet.evidence.incidents import IncidentDetector
from fleet.state.incidents import IncidentStore
from fleet.state.observe import Observation
from fleet.state.store import Store


def reg(mac, t, server, state="registered"):
    return Observation(mac=mac, t=t, source="wire", server=server, state=state)


def test_an_incident_is_listed_shown_and_on_status_while_open(redis_url):
    site = unique_id("inc", "site")
    macs = [f"0004f2bb000{i}" for i in range(3)]
    store = Store(redis_url)
    store.register_phones(site, [{"mac": m, "model": "VVX 410"} for m in macs])
    d = IncidentDetector(site, macs, {m: [1, 2] for m in macs}, IncidentStore(store), window_s=10, settle_s=5,
                         facts={m: {"model": "VVX 410", "family": "uc-5.x", "firmware": "6.4.0"} for m in macs})
    d.observe([reg(m, 1000.0, s) for m in macs for s in (1, 2)])
    d.observe([reg(m, 1100.0 + i, 1, "unregistered") for i, m in enumerate(macs[:2])])
    d.tick(1102.0, lambda: None)
    (listed,) = [i for i in json.loads(run_fleet(["incident", "list", "--json"], redis_url).stdout) if i["site"] == site]
    assert listed["status"] == "open" and listed["started"] == 1100.0 and listed["baseline"] == sorted(macs)
    status = run_fleet(["status", "--site", site], redis_url)
    assert f"OPEN INCIDENT {listed['id']} on site {site}" in status.stdout and "2 of 3 phones on server 2" in status.stdout
    d.observe([reg(m, 1120.0 + i, 1) for i, m in enumerate(macs)])
    d.tick(1125.0, lambda: None)
    res = run_fleet(["incident", "show", listed["id"], "--json"], redis_url)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "closed" and doc["observed_not_caused"] is True and doc["restored"] == 1120.0
    fo = {p["mac"]: (p["failover_s"], p["recovery_s"]) for p in doc["phones"]}
    assert fo == {macs[0]: (0.0, 0.0), macs[1]: (1.0, 1.0), macs[2]: (None, None)}, fo
    assert doc["never_failed_over"] == [] and doc["passed"] is True
    assert doc["phones"][2]["reasons"] == ["kept server 1 throughout: it never lost it"]
    assert doc["site_history"][0]["id"] == listed["id"]
    assert "OPEN INCIDENT" not in run_fleet(["status", "--site", site], redis_url).stdout
    events = IncidentStore(store).events(listed["id"])
    assert [e["kind"] for e in events][0] == "opened" and events[-1]["kind"] == "closed"


def test_show_of_an_unknown_incident_exits_2(redis_url):
    res = run_fleet(["incident", "show", "i-nope"], redis_url)
    assert res.returncode == 2 and "no incident i-nope" in res.stderr, res.stderr
