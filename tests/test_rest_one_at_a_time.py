"""One REST request at a time per UC Software 5 phone, across processes, and the lab's REST rules.

A collector process polls lineInfo while another process runs a worker's phone control (call check, uptime)
against the same virtual VVX, both through real Redis: the phone's lock (fleet.state.lease.PhoneRestLock) keeps
their requests apart, so the lab's count of requests that arrived while another was served stays 0. The same
control without the store's lock overlaps the poller, and the lab sees it: the count can fail.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml

from conftest import lab_spec, start_collector, wait_until

pytestmark = pytest.mark.slow


CONTROL_LOOP = r'''
import sys, time
from fleet import phones
from fleet.config import inventory
from fleet.drivers.errors import DriverError
from fleet.state.store import Store
inv_path, redis_url, mac, seconds, locked = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5] == "1"
inv = inventory.load(inv_path)
secrets = inventory.Secrets(inv)
site, phone = inv.phone(mac)
store = Store(redis_url) if locked else None
end, rounds, states, why = time.monotonic() + seconds, 0, set(), set()
while time.monotonic() < end:
    ctl = phones.for_phone(phone, secrets.credentials(phone.credentials), inv, secrets, store=store)
    check = ctl.call_check()
    states.add(check.state)
    if check.state != "idle":
        why.add(check.reason[:200])
    try:
        ctl.rest.uptime()
    except DriverError as exc:
        why.add(exc.message[:200])
    rounds += 1
print(f"rounds={rounds} states={sorted(states)} why={sorted(why)}", flush=True)
'''


@pytest.fixture(scope="module")
def lab(lab_factory):
    spec = lab_spec("restlock", phones=4, models=["VVX 410"], poll_interval=0.1)
    spec["timing"]["http_latency"] = 0.03          # a slow embedded web server: overlaps have room to happen
    spec["sites"][0]["firmware_version"] = "5.8.0"
    spec["sites"][0]["phones"]["version_of"] = {1: "5.4.5", 2: "5.7.0", 3: "5.3.0"}
    return lab_factory(spec)


def _rest(lab) -> dict:
    phone = lab.status()["phones"][0]
    return phone["rest"]


def _control_loop(lab, redis_url: str, seconds: float, locked: bool) -> str:
    mac = lab.status()["phones"][0]["mac"]
    res = subprocess.run([sys.executable, "-c", CONTROL_LOOP, str(lab.inventory), redis_url, mac, str(seconds),
                          "1" if locked else "0"], capture_output=True, text=True, timeout=seconds + 60)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_lab_phone_reports_its_firmware_and_inventory_carries_it(lab):
    assert _rest(lab)["firmware"] == "5.8.0"
    inv = yaml.safe_load(Path(lab.inventory).read_text())
    assert inv["sites"][0]["phones"][0]["firmware_version"] == "5.8.0"


def test_poller_and_worker_control_never_overlap_on_one_phone(lab, redis_url, tmp_path):
    collector = start_collector(redis_url, Path(lab.inventory), ("hq",), tmp_path / "collector.log")
    try:
        before = _rest(lab)
        wait_until(lambda: _rest(lab)["requests"] > before["requests"] + 20, 30, "the collector polling lineInfo",
                   state=lambda: _rest(lab))
        out = _control_loop(lab, redis_url, 8, locked=True)
        after = _rest(lab)
        rounds = int(out.split()[0].split("=")[1])
        assert rounds >= 3 and "states=['idle'] why=[]" in out, out
        # both talked to the phone meanwhile: more requests than the control's own three per round
        assert after["requests"] - before["requests"] > 3 * rounds + 20, (before, after, out)
        assert after["concurrent"] == before["concurrent"] == 0, (before, after)
        # the same control without the store's lock: the lab sees the overlap (so the count above can fail)
        _control_loop(lab, redis_url, 8, locked=False)
        assert _rest(lab)["concurrent"] > 0, _rest(lab)
    finally:
        collector.stop()


def test_concurrent_request_gets_busy_and_config_get_takes_at_most_20_names(lab):
    inv = yaml.safe_load(Path(lab.inventory).read_text())
    entry = inv["sites"][0]["phones"][0]
    base = f"http://{entry['address']}:{entry['http_port']}"
    from fleet.config import inventory as fleet_inventory

    creds = fleet_inventory.Secrets(fleet_inventory.load(lab.inventory)).credentials(entry["credentials"])
    auth = (creds.username, creds.password)
    names = [f"reg.1.server.{i}.expires" for i in range(1, 22)]
    answer = requests.post(base + "/api/v1/mgmt/config/get", json={"data": names}, auth=auth, timeout=10).json()
    assert answer == {"Status": "4009"}
    answer = requests.post(base + "/api/v1/mgmt/config/get", json={"data": names[:20]}, auth=auth, timeout=10).json()
    assert answer["Status"] == "2000" and len(answer["data"]) == 20
    before = _rest(lab)["concurrent"]
    answers: list[dict] = []

    def ask() -> None:
        answers.append(requests.get(base + "/api/v1/mgmt/lineInfo", auth=auth, timeout=10).json())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    statuses = sorted(a["Status"] for a in answers)
    assert "2000" in statuses and "4001" in statuses, statuses
    assert _rest(lab)["concurrent"] - before == statuses.count("4001")


def _control(lab, index: int):
    from fleet import phones
    from fleet.config import inventory

    inv = inventory.load(lab.inventory)
    secrets = inventory.Secrets(inv)
    phone = inv.sites[0].phones[index]
    return phones.for_phone(phone, secrets.credentials(phone.credentials), inv, secrets)


@pytest.mark.parametrize("index,version,endpoint", [(0, "5.8.0", "v2"), (1, "5.4.5", "v1"), (2, "5.7.0", "v1")])
def test_each_version_is_asked_by_its_endpoints_and_read_in_its_shapes(lab, index, version, endpoint):
    ctl = _control(lab, index)
    assert ctl.identify(5).ok and version in ctl.identify(5).detail
    check = ctl.call_check()
    assert check.state == "idle" and f"callStatus {endpoint}" in check.reason, check
    assert 0 <= ctl.rest.uptime() < 3600


def test_a_phone_below_54_is_checked_by_state_polling_and_rebooted_by_check_sync(lab):
    ctl = _control(lab, 3)
    mac = ctl.phone.mac
    assert lab.status()["phones"][3].get("rest") is None, "no REST API on 5.3"
    check = ctl.call_check()
    assert check.state == "idle" and "REST refused" in check.reason and "5.3.0" in check.reason, check
    boots = next(p for p in lab.status()["phones"] if p["mac"] == mac)["boot_count"]
    how = ctl.reboot()
    assert how.startswith("sip check-sync (REST refused"), how
    wait_until(lambda: next(p for p in lab.status()["phones"] if p["mac"] == mac)["boot_count"] > boots, 30,
               "the 5.3 phone rebooted by check-sync", state=lambda: next(p for p in lab.status()["phones"]
                                                                          if p["mac"] == mac))


def test_the_phone_lock_excludes_waits_a_bounded_time_and_names_the_holder(redis_url):
    from fleet.drivers.errors import DeviceTimeout
    from fleet.state.lease import PhoneRestLock
    from fleet.state.store import Store

    store = Store(redis_url)
    mac = "0004f2fe0001"
    with PhoneRestLock(store, mac, owner="collector:hq"):
        with pytest.raises(DeviceTimeout) as exc:
            with PhoneRestLock(store, mac, owner="control", wait=0.3):
                pass
        assert "collector:hq" in str(exc.value) and "nothing sent" in str(exc.value)
    with PhoneRestLock(store, mac, owner="control", wait=0.3):     # released: the next one gets it at once
        assert store.phone_lock_holder(mac).startswith("control:")
    assert store.phone_lock_holder(mac) is None
    # a holder that died (its process and the lock's renewal with it) keeps the phone only for the lock's lease
    assert store.acquire_phone_lock(mac, "dead:1:0", 0.3)
    with PhoneRestLock(store, mac, owner="control", wait=5):
        assert store.phone_lock_holder(mac).startswith("control:")


def test_a_rollout_over_every_firmware_variant_reboots_each_phone_once_by_its_method(lab, worker_factory, redis_url,
                                                                                     tmp_path):
    """5.8.0, 5.4.5 and 5.7.0 by REST safeRestart, 5.3.0 by check-sync (no REST there); the worker's collector
    polls lineInfo meanwhile, and no phone ever sees two REST requests at once."""
    import json
    import time

    from conftest import run_fleet, write_rollout_playbook

    worker_factory(lab.inventory, "hq")
    before = [(p.get("rest") or {}).get("concurrent", 0) for p in lab.status()["phones"]]
    t0 = time.time()
    pb = write_rollout_playbook(tmp_path / "pb.yml", "versions", canary=1, deadline=120, within=25)
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(lab.inventory), "--json"], redis_url, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"] == {"total": 4, "verified": 4}, out
    status = lab.status()
    events = {mac: [e for e in p["events"] if e["kind"] == "reboot" and e["t"] >= t0]
              for mac, p in status["ground_truth"]["phones"].items()}
    assert all(len(v) == 1 for v in events.values()), events
    reasons = {p["mac"]: events[p["mac"]][0]["data"].get("reason") for p in status["phones"]}
    macs = [p["mac"] for p in status["phones"]]
    assert [reasons[m] for m in macs[:3]] == ["rest"] * 3 and reasons[macs[3]] != "rest", reasons
    assert [(p.get("rest") or {}).get("concurrent", 0) for p in status["phones"]] == before, \
        ("REST requests overlapped during the rollout", before, [p.get("rest") for p in status["phones"]])
    detail = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)
    via = {m: st.get("reboot_via", "") for m, st in detail["phones"].items()}
    assert "REST refused" in via[macs[3]] and "5.3.0" in via[macs[3]], via
