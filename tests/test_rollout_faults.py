"""Rollouts survive a worker SIGKILLed mid-run and a Redis restart (AOF): every phone ends recorded, none rebooted twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import redis

from conftest import BIN, start_lab, start_worker
from fleet.redisboot import start_private
from test_rollout import macs_by_site, playbook, reboots, two_site_spec, unavailable_peaks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory):
    directory = tmp_path_factory.mktemp("aof")
    url, proc = start_private(directory, appendonly=True)
    state = {"url": url, "proc": proc, "dir": directory, "port": int(url.rsplit(":", 1)[1].split("/")[0])}
    yield state
    state["proc"].terminate()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, aof_redis):
    os.environ["FLEET_VISIBILITY_TIMEOUT"] = "15"   # inherited by the workers started below
    lab = start_lab(tmp_path_factory.mktemp("faults"), two_site_spec("faults", 33, 30))
    lab.workers = {}
    try:
        for site in ("east", "west"):
            lab.workers[site] = start_worker(aof_redis["url"], lab.inventory, site, tmp_path_factory.mktemp(site) / "w.log")
        yield lab
    finally:
        for w in lab.workers.values():
            w.stop()
        lab.down()
        os.environ.pop("FLEET_VISIBILITY_TIMEOUT", None)


def _start(pb, lab, url, extra=()):
    env = dict(os.environ, FLEET_REDIS_URL=url, FLEET_DISPATCH_STALL="8")
    return subprocess.Popen([BIN / "fleet", "rollout", *extra, "--json"] if extra and extra[0] == "resume" else
                            [BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(lab.inventory), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rollout_id(r: redis.Redis) -> str:
    return r.zrevrange("fleet:rollouts", 0, 0)[0].decode()


def _verified(r: redis.Redis, rid: str) -> int:
    return sum(1 for k in r.scan_iter(f"fleet:rollout:{rid}:phone:*") if r.hget(k, "state") == b"verified")


def _check_outcome(lab, r, rid, t0, expires):
    states = {k.decode().rsplit(":", 1)[1]: r.hget(k, "state").decode() for k in r.scan_iter(f"fleet:rollout:{rid}:phone:*")}
    assert len(states) == 60 and set(states.values()) == {"verified"}, states
    truth = lab.status()["ground_truth"]
    counts = reboots(truth, t0)
    assert max(counts.values()) == 1 and min(counts.values()) == 1, {m: c for m, c in counts.items() if c != 1}
    peaks = unavailable_peaks(truth, macs_by_site(lab), t0)
    assert all(v <= 4 for v in peaks.values()), peaks
    cfg = (lab.state / "boot-east" / f"{sorted(macs_by_site(lab)['east'])[0]}-fleet.cfg").read_text()
    assert f'reg.1.server.1.expires="{expires}"' in cfg


def test_worker_killed_mid_rollout(lab, aof_redis, tmp_path):
    r = redis.Redis.from_url(aof_redis["url"])
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 16},
                  strategy={"canary": 1, "wave_size": 10, "max_unavailable": 4, "failure_budget": {"total": 0},
                            "progress_deadline": 200})
    t0 = time.time()
    proc = _start(pb, lab, aof_redis["url"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if r.zcard("fleet:rollouts") and _verified(r, _rollout_id(r)) >= 8:
            break
    rid = _rollout_id(r)
    east = lab.workers["east"]
    os.killpg(east.proc.pid, signal.SIGKILL)
    east.proc.wait()
    time.sleep(2)
    lab.workers["east"] = start_worker(aof_redis["url"], lab.inventory, "east", tmp_path / "east2.log")
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "done"
    _check_outcome(lab, r, rid, t0, 16)


def test_redis_restarted_mid_rollout(lab, aof_redis, tmp_path):
    r = redis.Redis.from_url(aof_redis["url"])
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 18},
                  strategy={"canary": 1, "wave_size": 10, "max_unavailable": 4, "failure_budget": {"total": 0},
                            "progress_deadline": 200})
    t0 = time.time()
    before = r.zcard("fleet:rollouts")
    proc = _start(pb, lab, aof_redis["url"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if r.zcard("fleet:rollouts") > before and _verified(r, _rollout_id(r)) >= 8:
            break
    rid = _rollout_id(r)
    r.shutdown(save=False, now=False)   # AOF is fsynced on shutdown
    aof_redis["proc"].wait(10)
    time.sleep(1)
    _, aof_redis["proc"] = start_private(aof_redis["dir"], port=aof_redis["port"], appendonly=True)
    out, err = proc.communicate(timeout=400)
    if proc.returncode != 0 or json.loads(out or "{}").get("status") != "done":
        # the controller may have died with its connection; the rollout's state survived in Redis: resume it
        env = dict(os.environ, FLEET_REDIS_URL=aof_redis["url"], FLEET_DISPATCH_STALL="8")
        res = subprocess.run([BIN / "fleet", "rollout", "resume", rid, "--json"], env=env, capture_output=True, text=True,
                             timeout=400)
        assert res.returncode == 0, res.stderr[-3000:]
    _check_outcome(lab, redis.Redis.from_url(aof_redis["url"]), rid, t0, 18)
