"""A worker killed inside a rollout's power cycle, with the port off: the port is turned on again by the task's
successor, and the phone is verified. Its own file (and lab, and site), so `make test` runs it beside the rest of
the PoE tests (tests/test_poe_lab.py) rather than after them.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from conftest import BIN, lab_spec, start_lab, start_worker
from fleet.config import inventory
from fleet.state.store import RolloutStore, Store
from hil.harness import wait_for
from test_poe_lab import _phone, _registered, _rollout, _switch

pytestmark = [pytest.mark.slow, pytest.mark.lab]

def test_a_worker_killed_with_the_port_off_leaves_no_phone_unpowered(redis_url, tmp_path, monkeypatch):
    """A failpoint kills the worker right after the port went off, inside the cycle's wait: no `finally` runs, the
    port stays off (the lab switch says so). The task's successor (confirm_reboot, which the driver sends for a
    reboot claimed and never reported sent) finds the power cycle announced, turns the port on first, and counts it
    as the reboot."""
    lab = start_lab(tmp_path / "lab", lab_spec("poe-kill", phones=2, models=["VVX 410"], site="kill"))
    lab.inv = inventory.load(lab.inventory)
    site = lab.inv.sites[0]
    victim = site.phones[1]
    try:
        _killed_mid_cycle(lab, site, victim, redis_url, tmp_path, monkeypatch)
    finally:
        lab.down()


def _killed_mid_cycle(lab, site, victim, redis_url, tmp_path, monkeypatch) -> None:
    wait_for(lambda: _registered(_phone(lab, victim.mac)), 40, "the phone registered")
    boots = _phone(lab, victim.mac)["boot_count"]
    monkeypatch.setenv("FLEET_FAILPOINTS", f"rollout.power_off:{victim.mac}=kill@1")
    worker = start_worker(redis_url, lab.inventory, site.name, tmp_path / "dies.log", collect=False)
    monkeypatch.delenv("FLEET_FAILPOINTS")
    assert lab.post("/fault", {"mac": victim.mac, "fault": "hung"}) == {"ok": True}
    pb = _rollout(tmp_path, True, [victim.mac])
    doc = yaml.safe_load(open(pb))
    doc["params"] = {"reg.1.server.1.expires": 18}
    # the kill lands inside the wait; the driver sends its confirmation once a live sender would be done with the
    # off time (the stall below plus power_off_s), and finds the port still off
    doc["strategy"]["power_off_s"] = 20
    doc["verify"]["within"] = 90
    open(pb, "w").write(yaml.safe_dump(doc))
    # the driver sends a confirmation for a reboot claimed and never reported sent after this many seconds (more
    # than a hung phone's push takes before its reboot claim: a call check and an identity request that time out)
    env = dict(os.environ, FLEET_REDIS_URL=redis_url, FLEET_DISPATCH_STALL="25")
    proc = subprocess.Popen([BIN / "fleet", "rollout", "run", pb, "--inventory", str(lab.inventory), "--json"],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    after = None
    try:
        worker.proc.wait(90)          # the failpoint fired
        port = next(p for p in _switch(lab)["ports"] if p["mac"] == victim.mac)
        assert port["enabled"] is False and not _phone(lab, victim.mac)["powered"], port
        after = start_worker(redis_url, lab.inventory, site.name, tmp_path / "after.log", collect=True)
        try:
            out, err = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            rs = RolloutStore(Store(redis_url))
            rid = rs.list(limit=1)[0]["id"]
            pytest.fail(f"rollout stuck: {rs.phone(rid, victim.mac)} {[e['kind'] for e in rs.events(rid)]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        worker.stop()
        if after is not None:
            after.stop()
    assert proc.returncode == 0, err[-3000:] + out[-3000:]
    result = json.loads(out)
    assert result["status"] == "done" and result["counts"] == {"total": 1, "verified": 1}, result
    port = next(p for p in _switch(lab)["ports"] if p["mac"] == victim.mac)
    assert port["enabled"] and _phone(lab, victim.mac)["powered"] and not _phone(lab, victim.mac)["hung"]
    assert _phone(lab, victim.mac)["boot_count"] == boots + 1
    events = [e for e in RolloutStore(Store(redis_url)).events(result["id"]) if e.get("mac") == victim.mac]
    assert any(e["kind"] == "power-on" and e.get("after") == "a lost task" for e in events), \
        [e["kind"] for e in events]
