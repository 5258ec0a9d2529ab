"""The survivability record (fleet.state.record, `fleet record`): outages written into a real Redis as the
experiment runner and the incident detector write them, read back as figures by the command."""
from __future__ import annotations

import json

import pytest

from conftest import run_fleet, unique_id
from fleet.state import record
from fleet.state.store import Store
from fleet.state.record import Outage, PhoneOutcome


def _phone(mac, model, firmware, failover, recovery, why=()):
    return PhoneOutcome(mac, model, "uc-5.x", firmware, failover, recovery, not why, list(why))


@pytest.fixture
def site(redis_url):
    """Three experiments and two incidents of one site: two models, two firmware versions."""
    name = unique_id("rec", "site")
    store = Store(redis_url)
    store.register_phones(name, [{"mac": "0004f2aa0001", "model": "VVX 410"},
                                 {"mac": "0004f2aa0002", "model": "SoundPoint IP 650"}])
    for i, (origin, fo, rec) in enumerate([("experiment", 4.0, 2.0), ("experiment", 6.0, 3.0),
                                           ("experiment", 5.0, 2.5), ("incident", 8.0, 4.0), ("incident", 7.0, 1.0)]):
        why = ["never reached server 2 (no server 2 configured)"] if origin == "incident" and i == 4 else []
        record.add(store, Outage(origin, f"{origin[0]}{i}", name, 1_800_000_000.0 + 600 * i, [
            _phone("0004f2aa0001", "VVX 410", "6.4.0", fo, rec),
            _phone("0004f2aa0002", "SoundPoint IP 650", "4.0.15", None if why else fo + 1, rec + 1, why)]))
    return name


def test_fleet_record_prints_the_figures_and_json_carries_them(site, redis_url):
    res = run_fleet(["record", "--site", site, "--json"], redis_url)
    assert res.returncode == 0, res.stderr
    (doc,) = json.loads(res.stdout)
    assert (doc["site"], doc["outages"], doc["experiments"], doc["incidents"]) == (site, 5, 3, 2)
    # VVX: 4, 6, 5, 8, 7 s; SoundPoint: 5, 7, 6, 9 s (never failed over in the last incident)
    assert doc["failover_s"] == {"count": 9, "p50": 6.0, "p95": 9.0, "max": 9.0}
    groups = {g["model"]: g for g in doc["by_firmware_and_model"]}
    assert groups["VVX 410"]["firmware"] == "6.4.0" and groups["VVX 410"]["family"] == "uc-5.x"
    assert groups["VVX 410"]["failover_s"] == {"count": 5, "p50": 6.0, "p95": 8.0, "max": 8.0}
    assert groups["VVX 410"]["recovery_s"]["max"] == 4.0 and groups["VVX 410"]["failed"] == []
    (failed,) = groups["SoundPoint IP 650"]["failed"]
    assert failed["mac"] == "0004f2aa0002" and failed["origin"] == "incident" and failed["outage"] == "i4"
    assert failed["why"] == ["never reached server 2 (no server 2 configured)"]
    text = run_fleet(["record", "--site", site], redis_url)
    assert text.returncode == 0, text.stderr
    assert f"site {site}: 5 outages (3 experiments, 2 incidents); failover p50 6.0 s, p95 9.0 s, max 9.0 s" in text.stdout
    assert "0004f2aa0002 failed in incident i4" in text.stdout and "no server 2 configured" in text.stdout
    assert "6.4.0" in text.stdout and "4.0.15" in text.stdout


def test_the_last_outages_for_a_report_are_the_newest_first(site, redis_url):
    last = record.last_outages(Store(redis_url), site, 3)
    assert [h["id"] for h in last] == ["i4", "i3", "e2"]
    assert last[0] == {"origin": "incident", "id": "i4", "t": 1_800_002_400.0, "phones": 2, "failed": 1,
                       "failover_max_s": 7.0, "recovery_max_s": 2.0}


def test_an_unknown_site_exits_2(redis_url):
    res = run_fleet(["record", "--site", "no-such-site-anywhere"], redis_url)
    assert res.returncode == 2 and "no site 'no-such-site-anywhere'" in res.stderr, res.stderr
