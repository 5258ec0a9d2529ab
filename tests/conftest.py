"""Shared fixtures: a private Redis, virtual labs started with `hil up`, and real `fleet worker` processes.

Nothing here touches the machine's own Redis or any address outside loopback:
each test session starts its own redis-server on a free port, and each lab
uses its own 127.N.x.x block.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from fleet.redisboot import free_port, start_private

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """The session's redis-server: default user off; `fleet` (what the code under test uses) and `admin`
    (MONITOR, for tests that watch every command) with random passwords."""
    admin = secrets.token_urlsafe(24)
    url, proc = start_private(tmp_path_factory.mktemp("redis"), admin_password=admin)
    yield url, f"redis://admin:{admin}@{url.rsplit('@', 1)[1]}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(redis_server):
    return redis_server[0]


@pytest.fixture(scope="session")
def redis_admin_url(redis_server):
    return redis_server[1]


class RunningLab:
    def __init__(self, state: Path, inventory: Path, spec: dict) -> None:
        self.state, self.inventory, self.spec = state, inventory, spec
        self.control = json.loads((state / "control.json").read_text())["url"]

    def status(self, since: float = 0.0) -> dict:
        return requests.get(self.control + "/status", params={"since": since}, timeout=10).json()

    def post(self, path: str, body: dict) -> dict:
        return requests.post(self.control + path, json=body, timeout=30).json()

    def down(self) -> None:
        subprocess.run([BIN / "hil", "down", "--state-dir", str(self.state)], check=False, capture_output=True)


def lab_spec(name: str, net: int, *, phones: int = 4, servers: list[dict] | None = None, models=None,
             boot_protocol: str = "http", faults: dict | None = None, retry_interval: float = 3, site: str = "hq",
             poll_interval: float = 0.0) -> dict:
    return {
        "name": name, "net": net, "firmware_family": "uc-5.x",
        "timing": {"boot_time": 0.5, "retry_interval": retry_interval, "log_upload_period": 5, "dns_ttl": 1,
                   "test_speed": True},   # timers below the real ranges: fast tests (hil.labfile)
        "sites": [{
            "name": site, "boot_protocol": boot_protocol,
            "phones": {"count": phones, "models": models or ["SoundPoint IP 650", "VVX 410"]},
            "servers": servers or [
                {"address": "provider", "expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3},
                {"address": "gateway", "expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3}],
            "faults": faults or {},
            "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}",
                          "poll_interval": poll_interval},
        }],
    }


def start_lab(tmp: Path, spec: dict) -> RunningLab:
    labfile = tmp / "lab.yml"
    labfile.write_text(yaml.safe_dump(spec))
    state, inv = tmp / "state", tmp / "inventory.yml"
    subprocess.run([BIN / "hil", "up", str(labfile), "--state-dir", str(state), "--inventory-out", str(inv),
                    "--ready-timeout", "40"], check=True, timeout=90)
    return RunningLab(state, inv, spec)


@pytest.fixture(scope="module")
def lab_factory(tmp_path_factory):
    labs: list[RunningLab] = []

    def make(spec: dict) -> RunningLab:
        lab = start_lab(tmp_path_factory.mktemp(spec["name"]), spec)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


class Worker:
    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def start_worker(redis_url: str, inventory: Path, site: str, log: Path, collect: bool = True,
                 extra: tuple[str, ...] = ()) -> Worker:
    env = dict(os.environ, FLEET_REDIS_URL=redis_url)
    out = open(log, "w")
    site_args = ["--site", site] if site != "control" else []
    proc = subprocess.Popen([BIN / "fleet", "worker", "--inventory", str(inventory), *site_args, *extra]
                            + ([] if collect else ["--no-collect"]),
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    from celery import Celery

    # a Celery app of its own: the shared one keeps a broker pool for the first Redis it was configured with
    probe = Celery(broker=redis_url, backend=redis_url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            replies = probe.control.ping(timeout=0.5) or []
            if any(site in list(r)[0] for r in replies):
                time.sleep(0.5)  # the collectors start on worker_ready
                return Worker(proc, log)
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-2000:]}")
        raise RuntimeError("worker did not answer ping")
    finally:
        probe.close()


def start_collector(redis_url: str, inventory: Path, sites: tuple[str, ...], log: Path) -> Worker:
    """`fleet collector` as its own process: observations keep flowing while workers are killed."""
    env = dict(os.environ, FLEET_REDIS_URL=redis_url)
    proc = subprocess.Popen([BIN / "fleet", "collector", "--inventory", str(inventory), *[a for s in sites for a in ("--site", s)]],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while "collecting for" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"collector did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return Worker(proc, log)


@pytest.fixture(scope="module")
def worker_factory(redis_url, tmp_path_factory):
    workers: list[Worker] = []

    def make(inventory: Path, site: str = "hq", collect: bool = True) -> Worker:
        w = start_worker(redis_url, inventory, site, tmp_path_factory.mktemp("worker") / "worker.log", collect)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def wait_until(cond, timeout: float, what: str, step: float = 0.1):
    """Poll `cond` until it returns something truthy; past `timeout`, fail naming `what` and the last value seen."""
    from fleet.deadline import poll_until

    value = poll_until(cond, timeout, step)
    if not value:
        raise AssertionError(f"{what} not reached within {timeout}s (last seen: {value!r})")
    return value


def run_fleet(args: list[str], redis_url: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLEET_REDIS_URL=redis_url)
    return subprocess.run([BIN / "fleet", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)
