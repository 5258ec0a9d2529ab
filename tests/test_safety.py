"""Safety and secrecy: a killed controller never leaves the WAN down; no secret reaches Redis, logs or reports."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import redis
import yaml

from conftest import BIN, lab_spec, run_fleet, wait_until
from soundpoint.deadline import poll_until
from fleet.state.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(lab_factory, worker_factory):
    lab = lab_factory(lab_spec("safety", phones=3))
    lab.worker = worker_factory(lab.inventory)
    return lab


def _wan(lab) -> dict:
    return lab.status()["sites"][0]["router"]["wan_state"]


def _start_outage_run(lab, redis_url: str, tmp_path, max_duration: int, lease_ttl: float | None = None,
                      **popen) -> subprocess.Popen:
    """Start `fleet experiment run` on a playbook that cuts the WAN and then lingers; return once the WAN is down."""
    pb = tmp_path / "long.yml"
    pb.write_text("kind: experiment\nname: long\nsite: hq\nsteps:\n"
                  f"  - {{name: cut, outage: link-down, max_duration: {max_duration}}}\n  - {{name: linger, wait: 120}}\n"
                  "  - {name: back, restore: true}\n")
    env = dict(os.environ, FLEET_REDIS_URL=redis_url, **({"FLEET_LEASE_TTL": str(lease_ttl)} if lease_ttl else {}))
    started = time.time()   # before the dead-man can be armed: a floor under its sleep's start
    proc = subprocess.Popen([BIN / "fleet", "experiment", "run", str(pb), "--inventory", str(lab.inventory),
                             "--report-dir", str(tmp_path), "--json"], env=env, **popen)
    poll_until(lambda: not _wan(lab)["admin_up"], 30, 0.1)   # the callers assert on the WAN state
    proc.playbook, proc.started = pb, started
    return proc


def test_killed_controller_the_router_restores_the_wan_by_itself(lab, redis_url, tmp_path):
    # a 15 s lease (not the default 30 s): it still outlives the check below, and the next test waits less for it
    proc = _start_outage_run(lab, redis_url, tmp_path, 6, lease_ttl=15, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    pb = proc.playbook
    try:
        assert _wan(lab)["admin_up"] is False, "the outage never started"
        t_kill = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        # the lease the dead controller held blocks a second run until it expires, with a message saying so
        res = run_fleet(["experiment", "run", str(pb), "--inventory", str(lab.inventory)], redis_url)
        assert res.returncode == 3 and "leased by" in res.stderr, res.stderr[-2000:]
        wait_until(lambda: _wan(lab)["admin_up"], 45, "the router's own restore of the WAN", step=0.2, state=lambda: _wan(lab))
        history = lab.status()["sites"][0]["router"]["history"]
        down = [h["t"] for h in history if h["change"] == "link down"][-1]
        up = [h["t"] for h in history if h["change"] == "link up" and h["t"] > down][0]
        # the dead-man's sleep starts when it is armed, just before the cut (how long before depends on the load):
        # it restores max_duration (6 s) after the arm, so no earlier than 6 s after the run started and no later
        # than 6 s after the cut, plus the restore's own commands
        assert up - proc.started >= 6 - 0.2 and up - down <= 9, (up - proc.started, up - down)
        assert up > t_kill
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ctrl_c_restores_the_wan_before_exiting(lab, redis_url, tmp_path):
    # wait for the previous test's lease to lapse (15 s TTL, not renewed by the killed controller)
    store = Store(redis_url)
    wait_until(lambda: store.lease_info("hq")[0] is None, 40, "the killed controller's lease on hq to lapse", step=0.5)
    proc = _start_outage_run(lab, redis_url, tmp_path, 300, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wan(lab)["admin_up"] is False
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert _wan(lab)["admin_up"] is True, err
    doc = json.loads(out)
    assert proc.returncode == 130 and doc["passed"] is False and doc["interrupted"] == "SIGINT"
    assert any("interrupted" in e for e in doc["errors"])
    assert doc["outages"][0]["confirmed"].startswith("restored by the controller"), doc["outages"]
    assert store.lease_info("hq")[0] is None, "the interrupted run left its lease behind"


def test_no_secret_reaches_redis_logs_reports_or_task_messages(lab, redis_url, redis_admin_url, tmp_path):
    secrets_doc = yaml.safe_load((lab.state / "secrets.yml").read_text())
    planted = [v["password"] for v in secrets_doc.values() if v.get("password")]
    key_text = (lab.state / "router_client_key").read_text()
    planted += [line for line in key_text.splitlines() if len(line) > 40][:2]
    planted.append(redis_url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1])   # the Redis ACL password
    assert len(planted) >= 5 and all(len(s) >= 8 for s in planted)

    r = redis.Redis.from_url(redis_url)
    store = Store(redis_url)
    wait_until(lambda: store.lease_info("hq")[0] is None, 40, "the previous run's lease on hq to lapse", step=0.5)
    seen: list[str] = []
    stop = threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(redis_admin_url).monitor() as m:   # MONITOR is not for the fleet user
            for cmd in m.listen():
                seen.append(cmd["command"])
                if stop.is_set():
                    break

    t = threading.Thread(target=monitor, daemon=True)
    t.start()
    # MONITOR is attached once it reports a command of ours
    wait_until(lambda: r.ping() and any("PING" in c.upper() for c in seen), 10, "MONITOR attached")
    from conftest import ROOT

    res = run_fleet(["experiment", "run", str(ROOT / "playbooks/wan-outage-fallback.yml"), "--inventory", str(lab.inventory),
                     "--report-dir", str(tmp_path / "reports"), "--json"], redis_url)
    stop.set()
    r.ping()
    t.join(5)
    assert res.returncode == 0, res.stderr
    assert len(seen) > 50, "the monitor saw the Celery traffic"
    corpus = {"redis commands": "\n".join(seen), "stdout": res.stdout, "stderr": res.stderr,
              "worker log": lab.worker.log.read_text(), "lab log": (lab.state / "lab.log").read_text(),
              "redis data": _dump_redis(r)}
    for path in (tmp_path / "reports").rglob("*"):
        if path.is_file():
            corpus[str(path)] = path.read_text()
    for name, text in corpus.items():
        for secret in planted:
            assert secret not in text, f"a secret leaked into {name}"


def _dump_redis(r: redis.Redis) -> str:
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            out.append(repr(r.get(key)))
        elif kind == "hash":
            out.append(repr(r.hgetall(key)))
        elif kind == "list":
            out.append(repr(r.lrange(key, 0, -1)))
        elif kind == "set":
            out.append(repr(r.smembers(key)))
        elif kind == "zset":
            out.append(repr(r.zrange(key, 0, -1)))
        elif kind == "stream":
            out.append(repr(r.xrange(key)))
    return "\n".join(out)
