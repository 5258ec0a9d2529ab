"""Scheduled rollouts: cron entries from playbooks, previous fire times, missed runs recorded, beat without a file;
compose file sane. The scheduled runs themselves (drill, exactly once) are in test_scheduled_rollout.py."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis
import yaml

from conftest import ROOT
from fleet.rollout import schedule
from fleet.state.store import Store
from soundpoint.yamlfile import FileError


def test_shipped_playbooks_schedule_parses():
    entries = schedule.load_entries(ROOT / "playbooks")
    assert [(e.name, e.cron, e.timezone) for e in entries] == [("add-fallback-gateway", "30 2 * * 2", "Europe/Berlin")]
    beat = schedule.beat_schedule(entries, "/x/inv.yml")
    assert beat["rollout:add-fallback-gateway"]["options"] == {"queue": "fleet.control"}


def test_previous_fire_respects_the_time_zone():
    e = schedule.Entry("x", "p", "30 2 * * 2", "Europe/Berlin")
    # Wednesday 2026-11-25 10:00 Berlin: the last run was due Tuesday 02:30 Berlin (01:30 UTC)
    now = datetime(2026, 11, 25, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    due = schedule.previous_fire(e, now)
    assert due.isoformat() == "2026-11-24T02:30:00+01:00"


def test_missed_run_is_recorded_once(redis_url):
    store = Store(redis_url)
    name = f"nightly-test-{uuid.uuid4().hex[:8]}"   # the session's Redis is shared: a schedule of this test's own
    e = schedule.Entry(name, "p", "0 * * * *", "UTC")
    store.set_schedule_seen_since(name, datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp())
    now = datetime(2026, 1, 1, 5, 30, tzinfo=ZoneInfo("UTC"))
    missed = schedule.check_missed(store, [e], now)
    assert missed and "was due at 2026-01-01T05:00:00+00:00" in missed[0]
    schedule.check_missed(store, [e], now)
    assert len([m for m in store.missed_runs() if f" {name} " in m]) == 1, store.missed_runs()
    store.set_schedule_last_run(name, datetime(2026, 1, 1, 5, 0, 5, tzinfo=ZoneInfo("UTC")).timestamp())
    assert schedule.check_missed(store, [e], now) == []


def test_kind_is_read_from_the_yaml_not_grepped(tmp_path):
    """`kind: "rollout"` (quoted) is a rollout; a comment or a string mentioning `kind: rollout` is not."""
    (tmp_path / "quoted.yml").write_text('kind: "rollout"\nname: quoted\nparams: {reg.1.server.1.expires: 600}\n'
                                         "schedule: {cron: '15 1 * * *', timezone: UTC}\n")
    (tmp_path / "exp.yml").write_text("# not a kind: rollout\nkind: experiment\nname: e\nsite: hq\nsteps: []\n")
    entries = schedule.load_entries(tmp_path)
    assert [(e.name, e.cron) for e in entries] == [("quoted", "15 1 * * *")]


def test_rollout_id_is_the_same_for_every_copy_of_one_run():
    berlin = datetime(2026, 11, 24, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert schedule.rollout_id("add-gw", berlin) == "add-gw-20261124-0130Z"
    assert schedule.rollout_id("add-gw", datetime.fromisoformat(berlin.isoformat())) == "add-gw-20261124-0130Z"
    assert schedule.rollout_id("add-gw", berlin.replace(day=25)) != "add-gw-20261124-0130Z"


def test_beat_sends_the_fire_time_and_keeps_no_schedule_file(redis_url, tmp_path, monkeypatch):
    """FleetScheduler is beat's in-memory scheduler: the message names the cron time it fires for, the time it
    was sent goes to Redis (through the store), and nothing is written where beat runs."""
    from fleet.worker.app import app, configure

    monkeypatch.chdir(tmp_path)
    configure(redis_url)
    store = Store(redis_url)
    broker = redis.Redis.from_url(redis_url, decode_responses=True)   # Celery's queue, not a key of ours
    broker.delete("fleet.control")
    e = schedule.Entry("every-minute", str(tmp_path / "pb.yml"), "* * * * *", "UTC")
    app.conf.beat_schedule = schedule.beat_schedule([e], "/x/inv.yml")
    scheduler = schedule.scheduler_for(store, [e])(app=app)
    before = time.time()
    scheduler.apply_async(scheduler.schedule["rollout:every-minute"])
    expected = schedule.previous_fire(e).isoformat()
    raw = broker.lrange("fleet.control", 0, -1)
    assert len(raw) == 1, raw
    message = json.loads(raw[0])
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [str(tmp_path / "pb.yml"), "/x/inv.yml", "every-minute"] and kwargs == {"fire_time": expected}
    sent = store.schedule_sent("every-minute")
    assert sent["fire_time"] == expected and float(sent["t"]) >= before
    assert list(tmp_path.iterdir()) == [], "beat must not leave a schedule file in its working directory"
    broker.delete("fleet.control")


def test_bad_cron_names_the_file(tmp_path):
    (tmp_path / "r.yml").write_text("kind: rollout\nname: r\nparams: {reg.1.server.1.expires: 600}\n"
                                    "schedule: {cron: '99 * * * *'}\n")
    with pytest.raises(FileError, match="schedule.cron"):
        schedule.load_entries(tmp_path)


def test_a_cron_entry_that_never_fires_is_refused_naming_the_file(tmp_path):
    (tmp_path / "r.yml").write_text("kind: rollout\nname: r\nparams: {reg.1.server.1.expires: 600}\n"
                                    "schedule: {cron: '0 3 31 2,4 *'}\n")
    with pytest.raises(FileError, match=r"r\.yml:4: schedule\.cron: .*never fires: day 31 .* month 2, 4"):
        schedule.load_entries(tmp_path)


@pytest.mark.parametrize("expr", ["0 3 29 2 *", "0 3 31 2 mon", "0 3 31 */2 *", "0 3 5/10 * *", "*/15 1-5/2 1,15 jan-mar *"])
def test_cron_entries_that_can_fire_are_accepted(expr):
    from fleet.config import validate

    assert validate.cron(expr) == expr


def test_compose_file_has_redis_with_aof_workers_beat_flower_and_lab():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "worker-hq", "collector-hq", "scheduler", "flower", "lab"} <= set(services)
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    assert services["worker-hq"]["environment"]["FLEET_REDIS_URL"].startswith("redis://fleet:${FLEET_REDIS_PASSWORD:?")
    assert "--no-collect" in services["worker-hq"]["command"] and services["collector-hq"]["command"][:2] == ["fleet", "collector"]


def test_compose_itself_accepts_the_file():
    """Compose judges the file where it is installed: the v2 plugin, or Debian's docker-compose (v1)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose = ["docker-compose"]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed: Compose's own check of the file did not run")
    env = dict(os.environ, FLEET_REDIS_PASSWORD="0123456789abcdef0123", FLOWER_BASIC_AUTH="admin:0123456789abcdef")
    res = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
