"""Scheduled rollouts on the virtual lab: they run their failover drill, run exactly once, and stop on a lost lease.

The scheduled task is sent the way beat sends it (fleet.scheduled_rollout on
the fleet.control queue, with the fire time) to a real control worker; the
rollout is then driven by short ticks (fleet.rollout.ticks). A second copy of
the message (a broker redelivery, a beat restarted within the minute) arrives
while the first drives the rollout; it must not start a second driver. Every
worker here runs with a short broker visibility timeout, so a tick held up
behind other work is delivered a second time too, as it would be in
production after 600 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timezone

import pytest
import yaml
from celery import Celery

from conftest import BIN, ROOT, lab_spec, run_fleet, start_lab, start_worker, wait_until
from fleet.rollout import schedule
from soundpoint.deadline import poll_until
from fleet.state.store import RolloutStore, Store
from test_rollout import reboots

pytestmark = pytest.mark.slow

SITE = "sched"
VISIBILITY_S = 12
BUDGET_S = 250   # every wait ends before pytest's own 300 s, with the rollout's state in the message


@pytest.fixture(scope="module")
def lab(tmp_path_factory, redis_url):
    os.environ["FLEET_VISIBILITY_TIMEOUT"] = str(VISIBILITY_S)   # inherited by the workers started below
    logs = tmp_path_factory.mktemp("logs")
    lab = start_lab(tmp_path_factory.mktemp("sched"), lab_spec("sched", phones=4, site=SITE))
    workers = []
    try:
        workers.append(start_worker(redis_url, lab.inventory, SITE, logs / "site.log"))
        workers.append(start_worker(redis_url, lab.inventory, "control", logs / "control.log", extra=("--control",)))
        lab.control_worker = workers[-1]
        yield lab
    finally:
        for w in workers:
            w.stop()
        lab.down()
        os.environ.pop("FLEET_VISIBILITY_TIMEOUT", None)


def _playbook(tmp_path, name: str, expires: int, drill: str) -> str:
    doc = {"kind": "rollout", "name": name, "params": {"reg.1.server.1.expires": expires},
           "strategy": {"canary": 1, "wave_size": 4, "max_unavailable": 2, "failure_budget": {"total": 0},
                        "progress_deadline": 120},
           "verify": {"registered_to": [1, 2], "within": 25}, "rollback": True, "drill": drill,
           "schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _send(redis_url: str, lab, pb: str, name: str, fire: datetime) -> None:
    client = Celery(broker=redis_url)
    try:
        client.send_task("fleet.scheduled_rollout", args=[pb, str(lab.inventory), name],
                         kwargs={"fire_time": fire.isoformat()}, queue="fleet.control")
    finally:
        client.close()


def _status(redis_url: str, rid: str) -> str:
    res = run_fleet(["rollout", "status", rid, "--json"], redis_url, timeout=20)
    return res.stdout[-3000:] or res.stderr[-1000:]


def _wait_finished(rs: RolloutStore, redis_url: str, rid: str, end_events: int = 1) -> dict:
    """The rollout's record (plan decoded) once it ended; fails with `fleet rollout status --json` if it does not
    in the budget."""
    wait_until(lambda: sum(1 for e in rs.events(rid) if e["kind"] == "end") >= end_events, BUDGET_S,
               f"the end of scheduled rollout {rid}", step=0.5, state=lambda: _status(redis_url, rid))
    return rs.get(rid)


def test_scheduled_rollout_runs_its_drill_once_though_redelivered(lab, redis_url, tmp_path):
    store = Store(redis_url)
    rs = RolloutStore(store)
    fire = datetime(2026, 1, 6, 3, 0, tzinfo=timezone.utc)
    pb = _playbook(tmp_path, "nightly", 26, str(ROOT / "playbooks/wan-outage-fallback.yml"))
    rid = schedule.rollout_id("nightly", fire)
    t0 = time.time()
    _send(redis_url, lab, pb, "nightly", fire)
    wait_until(lambda: any(e["kind"] == "run" for e in rs.events(rid)), 60, f"a driver of {rid}", step=0.2,
               state=lambda: _status(redis_url, rid))
    _send(redis_url, lab, pb, "nightly", fire)   # the same message again, while the first copy drives the rollout
    meta = _wait_finished(rs, redis_url, rid)
    assert meta["status"] == "done", _status(redis_url, rid)
    # the second copy came while the first copy's driver drove the rollout...
    poll_until(lambda: sum(1 for e in rs.events(rid) if e["kind"] == "scheduled") >= 2, 30, 0.5)
    events = rs.events(rid)
    kinds = [e["kind"] for e in events]
    end_t = next(e["t"] for e in events if e["kind"] == "end")
    copies = [e for e in events if e["kind"] == "scheduled"]
    assert len(copies) >= 2 and copies[1]["t"] < end_t, ("no second copy arrived while the rollout ran", kinds)
    # ...and only one driver ever ran it, under one lease holder; the other copy found it driven
    runs = [e for e in events if e["kind"] == "run"]
    assert len(runs) == 1 and kinds.count("end") == 1, kinds
    assert "not_driven" in kinds, kinds
    listed = [row["id"] for row in rs.list(limit=10_000)]
    assert rid in listed and len([i for i in listed if i.startswith("nightly-")]) == 1, listed
    # the drill ran, as an experiment on the canary site under the driver's lease, and passed
    drill = next(e for e in events if e["kind"] == "drill")
    assert drill["passed"] is True and drill["holder"] == runs[0]["holder"], drill
    experiment = store.experiment(drill["experiment"])
    assert experiment["site"] == SITE and experiment["status"] == "passed", experiment
    exp_events = [e["kind"] for e in store.events(drill["experiment"])]
    assert exp_events.count("outage") == 1, exp_events
    # it gated the rollout: the canary was verified before the drill, every other phone after it
    plan = meta["plan"]
    canary = plan["waves"][0][0]
    order = [(e["kind"], e.get("mac")) for e in events if e["kind"] in ("verified", "drill")]
    at = order.index(("drill", None))
    assert [m for k, m in order[:at]] == [canary], order
    assert sorted(m for k, m in order[at + 1:]) == sorted(p["mac"] for p in plan["phones"] if p["mac"] != canary), order
    # each phone rebooted exactly once, and the control worker is still there
    counts = reboots(lab.status()["ground_truth"], t0)
    assert set(counts.values()) == {1}, counts
    assert lab.control_worker.proc.poll() is None


def test_a_failed_drill_stops_the_scheduled_rollout_after_the_canary(lab, redis_url, tmp_path):
    store = Store(redis_url)
    rs = RolloutStore(store)
    drill = yaml.safe_load((ROOT / "playbooks/wan-outage-fallback.yml").read_text())
    # phones are on the provider: a baseline that expects the gateway cannot hold
    drill["steps"] = [{"name": "impossible baseline", "expect": "working_server", "server": 2, "within": 3}]
    drill_path = tmp_path / "failing-drill.yml"
    drill_path.write_text(yaml.safe_dump(drill))
    fire = datetime(2026, 1, 7, 3, 0, tzinfo=timezone.utc)
    pb = _playbook(tmp_path, "gated", 27, str(drill_path))
    rid = schedule.rollout_id("gated", fire)
    _send(redis_url, lab, pb, "gated", fire)
    meta = _wait_finished(rs, redis_url, rid)
    assert meta["status"] == "halted" and "failover drill" in meta["reason"], meta.get("reason")
    events = rs.events(rid)
    drill_event = next(e for e in events if e["kind"] == "drill")
    assert drill_event["passed"] is False and store.experiment(drill_event["experiment"])["status"] == "failed"
    plan = meta["plan"]
    states = {m: st.get("state") for m, st in rs.phones(rid, rs.macs(rid)).items()}
    canary = plan["waves"][0][0]
    assert states[canary] == "verified" and {s for m, s in states.items() if m != canary} == {"pending"}, states


def test_a_driver_whose_lease_is_taken_stops_and_the_rollout_resumes(lab, redis_url, tmp_path):
    store = Store(redis_url)
    rs = RolloutStore(store)
    doc = {"kind": "rollout", "name": "stolen", "params": {"reg.1.server.1.expires": 28},
           "strategy": {"canary": 1, "wave_size": 4, "max_unavailable": 1, "failure_budget": {"total": 0},
                        "progress_deadline": 120},
           "verify": {"registered_to": [1, 2], "within": 25}, "rollback": True}
    pb = tmp_path / "stolen.yml"
    pb.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, FLEET_REDIS_URL=redis_url, FLEET_LEASE_TTL="3")   # renewed every second
    proc = subprocess.Popen([BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(lab.inventory), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def lease_taken() -> str | None:
        exited = proc.poll() is not None
        holder = store.lease_info(SITE)[0]
        if holder and holder.startswith("rollout:"):
            return holder
        if exited:
            pytest.fail(f"the rollout exited before it took the site's lease: {proc.communicate()[1][-2000:]}")
        return None

    try:
        holder = wait_until(lease_taken, 60, "the rollout holding the site's lease", step=0.05)
    except BaseException:
        proc.kill()
        raise
    store.break_lease(SITE)   # as if it had lapsed and another run had taken the site
    store.acquire_lease(SITE, "thief", ttl=120)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rid = holder.split(":")[1]
        pytest.fail(f"the driver kept running without its lease: {_status(redis_url, rid)}")
    doc = json.loads(out)
    rid = doc["id"]
    assert proc.returncode == 1 and doc["status"] == "halted", (doc, err[-2000:])
    assert "no longer ours" in doc["reason"] and "thief" in doc["reason"], doc["reason"]
    meta = rs.get(rid)
    assert meta["status"] == "halted" and "thief" in meta["reason"], meta
    assert store.lease_info(SITE)[0] == "thief", "the driver released a lease that was no longer its own"
    last_wave = meta["plan"]["waves"][-1]
    unsettled = [m for m, st in rs.phones(rid, last_wave).items() if st.get("state") == "pending"]
    assert unsettled, "the rollout finished: the theft came too late to show anything"
    # the thief goes away; the rollout was left resumable and finishes
    store.break_lease(SITE)
    res = run_fleet(["rollout", "resume", rid, "--json"], redis_url, timeout=BUDGET_S - 120)
    assert res.returncode == 0 and json.loads(res.stdout)["status"] == "done", (res.stdout[-2000:], res.stderr[-2000:])
