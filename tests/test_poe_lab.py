"""PoE power cycling on the virtual lab: the snmp-poe driver against the lab switch's real SNMP agent, its refusals,
a hung phone, and a rollout that power-cycles that phone because it is configured to.

The lab's switch counts every SET that reaches it past authentication, so "refused before anything changes" is
judged by the switch's own count and its ports, never by what the driver says about itself. Addresses come from the
inventory the running lab wrote (its net is chosen when it starts).
"""
from __future__ import annotations

import json
import time

import pytest
import yaml

from conftest import lab_spec, run_fleet, start_lab
from fleet.config import inventory
from fleet.config.inventory import Credentials, PoePort
from fleet.drivers import switch as switches
from fleet.drivers.errors import AuthRefused, DeviceRefused, DeviceTimeout
from fleet.drivers.snmp_session import NoSuchName
from fleet.drivers.switch import snmp_poe
from fleet import phones
from fleet.state.store import RolloutStore, Store
from hil.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.lab]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    spec = lab_spec("poe", phones=3, models=["SoundPoint IP 650", "VVX 410"])     # a free net, chosen at start
    spec["timing"]["log_upload_period"] = 0
    lab = start_lab(tmp_path_factory.mktemp("poe"), spec)
    try:
        lab.inv = inventory.load(lab.inventory)
        lab.secrets = inventory.Secrets(lab.inv)
        yield lab
    finally:
        lab.down()


def _switch(lab) -> dict:
    return lab.status()["sites"][0]["switch"]


def _phone(lab, mac: str) -> dict:
    return next(p for p in lab.status()["phones"] if p["mac"] == mac)


def _registered(p: dict) -> bool:
    return p["booted"] and all(s["state"] == "registered" for r in p["registrations"] for s in r["servers"] if s["register"])


def _driver(lab, **update):
    sw = lab.inv.sites[0].switches[0].model_copy(update=update)
    creds = update.pop("creds", None) or lab.secrets.credentials(sw.credentials)
    return switches.connect(sw, creds)


def test_the_inventory_names_the_switch_and_a_port_per_phone(lab):
    site = lab.inv.sites[0]
    assert [sw.driver for sw in site.switches] == ["snmp-poe"]
    assert sorted(p.poe.port for p in site.phones) == ["1.1", "1.2", "1.3"]
    assert {p["port"]: p["mac"] for p in _switch(lab)["ports"]} == {p.poe.port: p.mac for p in site.phones}


def test_a_port_turned_off_takes_its_phone_away_and_on_boots_it_again(lab):
    phone = lab.inv.sites[0].phones[1]
    drv = _driver(lab)
    before = _phone(lab, phone.mac)
    sets = _switch(lab)["sets"]
    st = drv.port_state(phone.poe)
    assert (st.port, st.enabled, st.detection) == (phone.poe.port, True, "deliveringPower")
    off = drv.set_power(phone.poe, False)
    assert (off.enabled, off.detection) == (False, "disabled")
    gone = wait_for(lambda: (p := _phone(lab, phone.mac)) and not p["powered"] and not p["booted"] and p, 5,
                    "the phone gone with its power")
    assert all(s["state"] != "registered" for r in gone["registrations"] for s in r["servers"]), gone
    on = drv.set_power(phone.poe, True)
    assert (on.enabled, on.detection) == (True, "deliveringPower")
    back = wait_for(lambda: (p := _phone(lab, phone.mac)) and _registered(p) and p, 30, "the phone registered again")
    assert back["boot_count"] == before["boot_count"] + 1
    assert _switch(lab)["sets"] == sets + 2


def test_a_wrong_community_or_v3_key_is_refused_before_anything_is_set(lab):
    phone = lab.inv.sites[0].phones[0]
    sets = _switch(lab)["sets"]
    # v2c: the switch says nothing to a wrong community (a timeout); v3: it reports the wrong key (a refused login)
    for bad, error in ((dict(snmp_version="2c", creds=Credentials(password="not-the-community")), DeviceTimeout),
                       (dict(creds=Credentials(username="fleet", password="wrong-auth-key", priv_password="wrong-priv")),
                        AuthRefused)):
        with pytest.raises(error, match="get 1.3.6.1.2.1.105.1.1.1.3.1.1"):
            _driver(lab, **bad).set_power(phone.poe, False)
    assert _switch(lab)["sets"] == sets
    assert all(p["enabled"] for p in _switch(lab)["ports"]) and _phone(lab, phone.mac)["powered"]
    # the right community works (v2c, the secret the lab also writes)
    assert _driver(lab, snmp_version="2c", creds=lab.secrets.credentials("switch_snmp_v2c")).port_state(phone.poe).enabled


def test_an_unknown_port_is_refused_before_any_set(lab):
    sets = _switch(lab)["sets"]
    with pytest.raises(NoSuchName, match="NoSuchInstance"):
        _driver(lab).set_power(PoePort(switch="poe-hq", port="1.99"), False)
    with pytest.raises(NoSuchName):
        _driver(lab).set_power(PoePort(switch="poe-hq", port="2.1"), True)
    assert _switch(lab)["sets"] == sets and all(p["enabled"] for p in _switch(lab)["ports"])


def test_a_value_outside_truthvalue_is_refused_by_the_switch_and_changes_nothing(lab):
    phone = lab.inv.sites[0].phones[0]
    drv = _driver(lab)
    with pytest.raises(DeviceRefused, match="wrongValue"):
        drv.session.set_int(f"{snmp_poe.ADMIN_ENABLE}.1.1", 3)
    assert drv.port_state(phone.poe).enabled and _phone(lab, phone.mac)["powered"]


def test_a_hung_phone_answers_nothing_until_its_power_is_cycled(lab):
    phone = lab.inv.sites[0].phones[2]
    before = _phone(lab, phone.mac)["boot_count"]
    assert lab.post("/fault", {"mac": phone.mac, "fault": "hung"}) == {"ok": True}
    assert _phone(lab, phone.mac)["hung"]
    control = phones.for_phone(phone, lab.secrets.credentials(phone.credentials), lab.inv, lab.secrets)
    assert control.call_check().state == "unknown"
    assert control.identify(timeout=2).problem == "timeout"
    with pytest.raises(DeviceTimeout):
        control.reboot()
    assert _phone(lab, phone.mac)["boot_count"] == before, "no reboot method reached it"
    off, on = switches.cycle(_driver(lab), phone.poe, 0.5)
    assert (off.enabled, on.enabled) == (False, True)
    back = wait_for(lambda: (p := _phone(lab, phone.mac)) and _registered(p) and p, 30, "the phone back after the cycle")
    assert not back["hung"] and back["boot_count"] == before + 1
    assert control.identify().ok


def _rollout(tmp_path, fallback: bool, macs: list[str]) -> str:
    pb = tmp_path / f"pb-{time.time_ns()}.yml"
    pb.write_text(yaml.safe_dump({
        "kind": "rollout", "name": "poe", "targets": {"macs": macs},
        "params": {"reg.1.server.1.expires": 14 if fallback else 16},
        "strategy": {"canary": 0, "wave_size": 3, "max_unavailable": 3, "failure_budget": {"total": 0},
                     "progress_deadline": 90, "power_cycle_fallback": fallback, "power_off_s": 1},
        "verify": {"registered_to": [1, 2], "within": 40}, "rollback": False}))
    return str(pb)


def test_a_rollout_configured_to_power_cycles_a_hung_phone_and_verifies_it(lab, worker_factory, redis_url, tmp_path):
    site = lab.inv.sites[0]
    hung, other = site.phones[0], site.phones[1]
    wait_for(lambda: all(_registered(_phone(lab, p.mac)) for p in (hung, other)), 30, "both phones registered")
    worker_factory(lab.inventory, site.name)
    assert lab.post("/fault", {"mac": hung.mac, "fault": "hung"}) == {"ok": True}
    boots = {p.mac: _phone(lab, p.mac)["boot_count"] for p in (hung, other)}
    sets = _switch(lab)["sets"]
    res = run_fleet(["rollout", "run", _rollout(tmp_path, True, [hung.mac, other.mac]), "--inventory",
                     str(lab.inventory), "--json"], redis_url, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"] == {"total": 2, "verified": 2}, out
    # the lab's ground truth: the hung phone was powered off and on once (two SETs), booted once more, and is no
    # longer hung; the other phone was rebooted by its own method, not by the switch
    assert _switch(lab)["sets"] == sets + 2
    now = {p.mac: _phone(lab, p.mac) for p in (hung, other)}
    assert now[hung.mac]["boot_count"] == boots[hung.mac] + 1 and not now[hung.mac]["hung"]
    assert now[other.mac]["boot_count"] == boots[other.mac] + 1
    # the journal tells the story in order, each switch step with what the switch read back
    events = [e for e in RolloutStore(Store(redis_url)).events(out["id"]) if e.get("mac") == hung.mac]
    kinds = [e["kind"] for e in events if e["kind"] != "step"]
    for a, b in (("unanswered", "reboot-unanswered"), ("reboot-unanswered", "power-off"), ("power-off", "power-on")):
        assert a in kinds and b in kinds and kinds.index(a) < kinds.index(b), kinds
    off = next(e for e in events if e["kind"] == "power-off")
    on = next(e for e in events if e["kind"] == "power-on")
    assert (off["enabled"], off["detection"]) in ((False, "disabled"), ("False", "disabled")), off
    assert on["detection"] == "deliveringPower", on
    steps = {e["step"]: e["outcome"] for e in events if e["kind"] == "step" and e["phase"] == "end"}
    assert steps.get("reboot") == "failed" and steps.get("power cycle") == "ok", steps
    status = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)
    row = status["phones"][hung.mac]
    assert row["state"] == "verified" and "power cycle of poe-hq port 1.1" in row["reboot_via"], row


def test_without_the_fallback_a_hung_phone_is_deferred_and_its_port_left_alone(lab, worker_factory, redis_url, tmp_path):
    site = lab.inv.sites[0]
    hung = site.phones[2]
    wait_for(lambda: _registered(_phone(lab, hung.mac)), 30, "the phone registered")
    worker_factory(lab.inventory, site.name)
    assert lab.post("/fault", {"mac": hung.mac, "fault": "hung"}) == {"ok": True}
    sets = _switch(lab)["sets"]
    pb = _rollout(tmp_path, False, [hung.mac])
    doc = yaml.safe_load(open(pb))
    doc["strategy"]["progress_deadline"] = 25
    open(pb, "w").write(yaml.safe_dump(doc))
    res = run_fleet(["rollout", "run", pb, "--inventory", str(lab.inventory), "--json"], redis_url, timeout=240)
    out = json.loads(res.stdout or "{}")
    assert out.get("status") != "done", out
    assert _switch(lab)["sets"] == sets and _phone(lab, hung.mac)["hung"]
    kinds = [e["kind"] for e in RolloutStore(Store(redis_url)).events(out["id"]) if e.get("mac") == hung.mac]
    assert "deferred" in kinds and "power-off" not in kinds, kinds
    switches.cycle(_driver(lab), hung.poe, 0.2)     # leave the lab as found


def test_an_experiment_power_step_cycles_the_selected_ports_and_the_phone_comes_back(lab, worker_factory, redis_url,
                                                                                      tmp_path):
    site = lab.inv.sites[0]
    target = site.phones[1]
    wait_for(lambda: all(_registered(_phone(lab, p.mac)) for p in site.phones), 40, "every phone registered")
    worker_factory(lab.inventory, site.name)
    before = {p.mac: _phone(lab, p.mac)["boot_count"] for p in site.phones}
    sets = _switch(lab)["sets"]
    pb = tmp_path / "power.yml"
    pb.write_text(yaml.safe_dump({"kind": "experiment", "name": "power blip", "site": site.name, "steps": [
        {"name": "baseline", "expect": "working_server", "server": 1, "within": 30},
        {"name": "blip", "power": {"phones": {"macs": [target.mac]}, "off_s": 2}},
        {"name": "back", "expect": "working_server", "server": 1, "within": 45, "phones": {"macs": [target.mac]}}]}))
    res = run_fleet(["experiment", "run", str(pb), "--inventory", str(lab.inventory), "--report-dir", str(tmp_path),
                     "--json"], redis_url)
    assert "Traceback" not in res.stderr, res.stderr
    doc = json.loads(res.stdout)
    blip = next(s for s in doc["steps"] if s["name"] == "blip")
    assert blip["passed"], blip
    assert _switch(lab)["sets"] == sets + 2, "one port off, then on: nothing else touched"
    after = {p.mac: _phone(lab, p.mac)["boot_count"] for p in site.phones}
    assert after == {m: n + (m == target.mac) for m, n in before.items()}, (before, after)
    truth = lab.status()["ground_truth"]["phones"][target.mac]["events"]
    power = [e["data"]["on"] for e in truth if e["kind"] == "power"]
    assert power[-2:] == [False, True], power
    assert doc["passed"] is True, doc["steps"]


def test_a_lab_file_hung_fault_strikes_once_booted_and_a_power_cycle_cures_it(tmp_path):
    lab = start_lab(tmp_path, lab_spec("poe-hung", phones=2, faults={0: "hung"}))
    try:
        inv = inventory.load(lab.inventory)
        hung, well = sorted(inv.sites[0].phones, key=lambda p: p.poe.port)
        # `hil up` is ready once every phone registered; the hung one may still be booting into its hang then
        first = wait_for(lambda: (p := _phone(lab, hung.mac)) and p["hung"] and p, 30, "the faulted phone hung")
        assert first["boot_count"] == 1, first
        assert _registered(_phone(lab, well.mac)) and not _phone(lab, well.mac)["hung"]
        secrets = inventory.Secrets(inv)
        control = phones.for_phone(hung, secrets.credentials(hung.credentials), inv, secrets)
        assert control.identify(timeout=2).problem == "timeout"
        sw = inv.sites[0].switches[0]
        switches.cycle(switches.connect(sw, secrets.credentials(sw.credentials)), hung.poe, 0.5)
        back = wait_for(lambda: (p := _phone(lab, hung.mac)) and _registered(p) and p, 30, "the phone back, not hung")
        assert not back["hung"] and back["boot_count"] == 2
    finally:
        lab.down()

