"""Scheduled rollouts: cron entries from playbooks, previous fire times, missed runs recorded; compose file sane."""
from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis
import yaml

from conftest import ROOT
from fleet import schedule
from fleet.yamlfile import FileError


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
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    e = schedule.Entry("nightly-test", "p", "0 * * * *", "UTC")
    for key in r.scan_iter("fleet:schedule:*"):
        r.delete(key)
    r.set("fleet:schedule:nightly-test:since", datetime(2026, 1, 1, tzinfo=ZoneInfo("UTC")).timestamp())
    now = datetime(2026, 1, 1, 5, 30, tzinfo=ZoneInfo("UTC"))
    missed = schedule.check_missed(r, [e], now)
    assert missed and "was due at 2026-01-01T05:00:00+00:00" in missed[0]
    schedule.check_missed(r, [e], now)
    assert r.llen("fleet:schedule:missed") == 1
    r.set("fleet:schedule:nightly-test:last_run", datetime(2026, 1, 1, 5, 0, 5, tzinfo=ZoneInfo("UTC")).timestamp())
    assert schedule.check_missed(r, [e], now) == []


def test_bad_cron_names_the_file(tmp_path):
    (tmp_path / "r.yml").write_text("kind: rollout\nname: r\nparams: {reg.1.server.1.expires: 600}\n"
                                    "schedule: {cron: '99 * * * *'}\n")
    with pytest.raises(FileError, match="schedule.cron"):
        schedule.load_entries(tmp_path)


def test_compose_file_has_redis_with_aof_workers_beat_flower_and_lab():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "worker-hq", "collector-hq", "scheduler", "flower", "lab"} <= set(services)
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    assert services["worker-hq"]["environment"]["FLEET_REDIS_URL"].startswith("redis://fleet:${FLEET_REDIS_PASSWORD:?")
    assert "--no-collect" in services["worker-hq"]["command"] and services["collector-hq"]["command"][:2] == ["fleet", "collector"]
    # Compose itself judges the file where it is installed: the v2 plugin, or Debian's docker-compose (v1)
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose = ["docker-compose"]
    else:
        return
    env = dict(os.environ, FLEET_REDIS_PASSWORD="0123456789abcdef0123", FLOWER_BASIC_AUTH="admin:0123456789abcdef")
    res = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
