"""A worker survives Redis going away while it runs a late-acked task (fleet.worker.broker).

Before the fix, the worker exited ("Unrecoverable error: AttributeError:
'NoneType' object has no attribute 'hostname'") whenever a task was in flight
as Redis stopped; its site's queue was then served by nobody, and a resumed
rollout waited for its progress deadline (the hang of
test_redis_restarted_mid_rollout).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit
from pathlib import Path

import pytest
import redis
from celery import Celery

from conftest import wait_until
from soundpoint.redisboot import start_private

HERE = Path(__file__).resolve().parent


def _wait(condition, seconds: float, what: str, log: Path):
    return wait_until(condition, seconds, what, state=lambda: f"worker log: {log.read_text()[-3000:]}")


def test_worker_keeps_serving_after_redis_restarts_under_a_running_task(tmp_path):
    admin = secrets.token_urlsafe(24)
    url, server = start_private(tmp_path / "redis", appendonly=True, admin_password=admin)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    log = tmp_path / "worker.log"
    env = dict(os.environ, FLEET_REDIS_URL=url, PYTHONPATH=f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "slow_worker_app", "worker", "-Q", "slow",
                               "--concurrency", "2", "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip",
                               "--without-mingle", "-n", "slow@%h"],
                              cwd=tmp_path, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    client = Celery(broker=url, backend=url)
    try:
        _wait(lambda: client.control.ping(timeout=0.5), 30, "the worker did not answer ping", log)
        r = redis.Redis.from_url(url)
        # one task running (delivered, not acknowledged) while the other process is idle: the worker is also
        # waiting on the queue (BRPOP) when Redis goes away, as a site's worker mostly is during a rollout
        client.send_task("test.slow", args=[6, "first"], queue="slow")
        _wait(lambda: r.get("first"), 30, "the slow task started", log)
        watcher = redis.Redis(port=port, username="admin", password=admin)   # CLIENT LIST is for admins only
        _wait(lambda: any(c.get("cmd") == "brpop" for c in watcher.client_list()), 10,
              "the worker waiting on its queue (BRPOP) beside the running task", log)
        watcher.close()
        server.terminate()   # SIGTERM: a clean shutdown, AOF fsynced (the fleet ACL user may not SHUTDOWN)
        server.wait(10)
        time.sleep(2)   # the experiment: Redis stays away for 2 s
        _, server = start_private(tmp_path / "redis", port=port, appendonly=True, password=urlsplit(url).password)
        # the worker reconnects and takes new work; before the fix it had exited by now
        result = client.send_task("test.slow", args=[0, "second"], queue="slow")
        try:
            assert result.get(timeout=60) == "slept 0"
        except Exception as exc:
            pytest.fail(f"no answer after the restart ({exc!r}); worker alive: {worker.poll() is None}; "
                        f"log: {log.read_text()[-3000:]}")
        assert worker.poll() is None, log.read_text()[-3000:]
        assert "Unrecoverable error" not in log.read_text(), log.read_text()[-3000:]
    finally:
        client.close()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        server.terminate()
