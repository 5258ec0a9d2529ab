"""A scheduled rollout with its failover drill completes on one worker with a single slot.

One `fleet worker --site S --control --concurrency 1` serves both the control
queue (the scheduled run and its ticks) and the site's queue (the pushes, the
drill's router tasks). A scheduled run that drove the rollout inside its task,
or a drill that waited there on its router tasks, would hold that one slot and
never let the tasks it waits for run: the rollout would never end. Driven in
ticks (fleet.rollout.ticks), it ends, with the drill passed.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import yaml
from celery import Celery

from conftest import ROOT, lab_spec, run_fleet, start_lab, start_worker, wait_until
from fleet.rollout import schedule
from fleet.state.store import RolloutStore, Store
from test_rollout import reboots

pytestmark = pytest.mark.slow

SITE = "solo"
BUDGET_S = 250


@pytest.fixture(scope="module")
def lab(tmp_path_factory, redis_url):
    logs = tmp_path_factory.mktemp("logs")
    lab = start_lab(tmp_path_factory.mktemp("solo"), lab_spec("solo", phones=4, site=SITE))
    worker = None
    try:
        worker = start_worker(redis_url, lab.inventory, SITE, logs / "worker.log",
                              extra=("--control", "--concurrency", "1"))
        lab.worker = worker
        yield lab
    finally:
        if worker is not None:
            worker.stop()
        lab.down()


def test_a_scheduled_rollout_and_its_drill_complete_on_one_worker_of_concurrency_one(lab, redis_url, tmp_path):
    store = Store(redis_url)
    rs = RolloutStore(store)
    doc = {"kind": "rollout", "name": "solo", "params": {"reg.1.server.1.expires": 29},
           "strategy": {"canary": 1, "wave_size": 4, "max_unavailable": 2, "failure_budget": {"total": 0},
                        "progress_deadline": 120},
           "verify": {"registered_to": [1, 2], "within": 25}, "rollback": True,
           "drill": str(ROOT / "playbooks/wan-outage-fallback.yml"),
           "schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}
    pb = tmp_path / "solo.yml"
    pb.write_text(yaml.safe_dump(doc))
    fire = datetime(2026, 1, 8, 3, 0, tzinfo=timezone.utc)
    rid = schedule.rollout_id("solo", fire)
    t0 = time.time()
    client = Celery(broker=redis_url)
    try:
        client.send_task("fleet.scheduled_rollout", args=[str(pb), str(lab.inventory), "solo"],
                         kwargs={"fire_time": fire.isoformat()}, queue="fleet.control")
    finally:
        client.close()

    def status() -> str:
        res = run_fleet(["rollout", "status", rid, "--json"], redis_url, timeout=20)
        return res.stdout[-3000:] or res.stderr[-1000:]

    wait_until(lambda: any(e["kind"] == "end" for e in rs.events(rid)), BUDGET_S, f"the end of scheduled rollout {rid}",
               step=0.5, state=status)
    meta = rs.get(rid)
    assert meta["status"] == "done", status()
    events = rs.events(rid)
    runs = [e for e in events if e["kind"] == "run"]
    assert len(runs) == 1 and runs[0].get("ticks") is True, runs
    drill = next(e for e in events if e["kind"] == "drill")
    assert drill["passed"] is True and drill["holder"] == runs[0]["holder"], drill
    experiment = store.experiment(drill["experiment"])
    assert experiment["site"] == SITE and experiment["status"] == "passed", experiment
    exp_events = [e["kind"] for e in store.events(drill["experiment"])]
    assert exp_events.count("outage") == 1 and exp_events.count("restore") == 1, exp_events
    # the canary before the drill, every other phone after it; each rebooted once; the lease given back
    canary = meta["plan"]["waves"][0][0]
    order = [(e["kind"], e.get("mac")) for e in events if e["kind"] in ("verified", "drill")]
    at = order.index(("drill", None))
    assert [m for _, m in order[:at]] == [canary], order
    assert set(reboots(lab.status()["ground_truth"], t0).values()) == {1}
    assert store.lease_info(SITE)[0] is None
    assert lab.worker.proc.poll() is None
