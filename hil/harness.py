"""Lab plus workers: a private Redis, a virtual lab, `fleet worker` and `fleet collector` processes, in one place.

The tests, the benchmarks and the demo all need the same start-up: a Redis of
their own, a lab brought up from a spec (`hil up` writes the inventory and the
secrets file beside its state), one worker per site queue and perhaps a
collector process. Each step waits for a condition with a deadline, never for
a fixed time, and fails with what it saw (the process's exit code, the end of
its log): a worker is ready when it answers a Celery ping under its site's
name and, if it collects, when every site's event listener accepts
connections; a collector process when it says it is collecting.

`Harness` owns what it starts and stops it in reverse order on exit, also
after an error half-way through. The free functions start one thing each for
callers (the pytest fixtures) that manage lifetimes themselves.

It lives beside the lab, not in `fleet/`: the controller never knows it is
talking to a lab. It drives fleet only through its command line and Redis URL.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, TypeVar

import requests
import yaml

from soundpoint.deadline import poll_until
from soundpoint.redisboot import start_private

BIN = Path(sys.executable).parent
T = TypeVar("T")


class HarnessError(RuntimeError):
    """Something the harness started did not come up; the message says what it saw."""


def wait_for(check: Callable[[], T], timeout: float, what: str, step: float = 0.1) -> T:
    """Call `check` until it returns something truthy; past `timeout`, raise naming `what` and the last value."""
    value = poll_until(check, timeout, step)
    if not value:
        raise HarnessError(f"{what} not reached within {timeout:g} s (last seen: {value!r})")
    return value


def _tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


# ---------------------------------------------------------------- the lab
@dataclass
class Lab:
    """A lab started with `hil up`: its state directory, the inventory it wrote, and its control API."""
    state: Path
    inventory: Path
    spec: dict

    @cached_property
    def control(self) -> str:
        return json.loads((self.state / "control.json").read_text())["url"]

    @cached_property
    def net(self) -> int:
        """The net the lab runs on (`auto` in the lab file is resolved at start: hil.netlock)."""
        return int(json.loads((self.state / "control.json").read_text())["net"])

    @cached_property
    def pid(self) -> int:
        return json.loads((self.state / "control.json").read_text())["pid"]

    def status(self, since: float = 0.0, timeout: float = 10) -> dict:
        return requests.get(self.control + "/status", params={"since": since}, timeout=timeout).json()

    def post(self, path: str, body: dict) -> dict:
        return requests.post(self.control + path, json=body, timeout=30).json()

    def unsettled(self) -> list[str]:
        """Phones not yet registered with every server they register with (`hil up` returns once each has one):
        a measurement that starts before they are all done measures the lab's start-up with it."""
        return [p["mac"] for p in self.status(timeout=60)["phones"]
                if not p["booted"] or not all(s["state"] == "registered" for r in p["registrations"]
                                               for s in r["servers"] if s["register"])]

    def down(self) -> None:
        stop_state(self.state)


def stop_state(state: Path) -> None:
    """`hil down` for the lab of this state directory, if there is one (a lab that never came up is fine)."""
    if state.exists():
        subprocess.run([BIN / "hil", "down", "--state-dir", str(state)], check=False, capture_output=True)


def start_lab(work: Path, spec: dict | Path, ready_timeout: float = 40, timeout: float | None = 90,
              env: dict | None = None) -> Lab:
    """`hil up` in the background on `spec` (a dict, written to work/lab.yml, or a lab file); returns once every
    phone registered (`hil up` waits for that itself, up to `ready_timeout`). The inventory and secrets file
    are written by `hil up`: work/inventory.yml and the state directory."""
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, dict):
        labfile = work / "lab.yml"
        labfile.write_text(yaml.safe_dump(spec))
    else:
        labfile = Path(spec)
    state, inv = work / "state", work / "inventory.yml"
    # `hil up` judges the lab file (a malformed one: exit 2 naming file, line and field); read it only after
    subprocess.run([BIN / "hil", "up", str(labfile), "--state-dir", str(state), "--inventory-out", str(inv),
                    "--ready-timeout", str(ready_timeout)], check=True, timeout=timeout, env=env)
    lab = Lab(state, inv, spec if isinstance(spec, dict) else yaml.safe_load(labfile.read_text()))
    lab.control, lab.net   # read now: the control file goes when the lab stops, and callers may ask afterwards
    return lab


# ---------------------------------------------------------------- workers and collectors
class Proc:
    """A fleet process in its own session, and the log it writes; `stop` ends its whole process group."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the group (a worker's pool children go with it), SIGKILL if it is still there after `timeout`."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                return
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def _spawn(args: list, redis_url: str, log: Path) -> Proc:
    env = dict(os.environ, FLEET_REDIS_URL=redis_url)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:   # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([BIN / "fleet", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Proc(proc, log)


def _collector_addresses(inventory: Path, sites: tuple[str, ...]) -> list[tuple[str, int]]:
    """Each site's event listener (host, port), from the inventory the lab wrote."""
    doc = yaml.safe_load(inventory.read_text())
    out = []
    for site in doc["sites"]:
        if site["name"] in sites and site.get("collector", {}).get("events"):
            host, port = site["collector"]["events"].rsplit(":", 1)
            out.append((host.strip("[]"), int(port)))
    return out


def listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def start_worker(redis_url: str, inventory: Path, site: str | tuple[str, ...], log: Path, collect: bool = True,
                 extra: tuple[str, ...] = (), timeout: float = 30) -> Proc:
    """`fleet worker` for one site's queue (or several; "control" alone means `--control` in `extra`), ready when
    it answers a ping under its node name and, when it collects, when its sites' event listeners accept."""
    sites = (site,) if isinstance(site, str) else tuple(site)
    site_args = [a for s in sites if s != "control" for a in ("--site", s)]
    worker = _spawn(["worker", "--inventory", str(inventory), *site_args, *extra, *([] if collect else ["--no-collect"])],
                    redis_url, log)
    try:
        wait_worker(worker, redis_url, sites, timeout)
        if collect:
            addresses = _collector_addresses(inventory, sites)

            def collecting() -> bool:
                _alive(worker, "worker")
                return all(listening(a) for a in addresses)

            wait_for(collecting, timeout, f"collectors of worker {'+'.join(sites)} listening on {addresses}")
    except BaseException:
        worker.stop()
        raise
    return worker


def _alive(p: Proc, what: str) -> None:
    if p.proc.poll() is not None:
        raise HarnessError(f"{what} exited with code {p.proc.returncode}: {_tail(p.log)}")


def wait_worker(worker: Proc, redis_url: str, sites: tuple[str, ...], timeout: float = 30) -> None:
    """Until a node whose name lists every one of `sites` answers a Celery ping."""
    from celery import Celery

    # a Celery app of its own: the shared one keeps a broker pool for the first Redis it was configured with
    probe = Celery(broker=redis_url, backend=redis_url)

    def answered() -> list[str]:
        _alive(worker, "worker")
        names = [name for reply in (probe.control.ping(timeout=0.5) or []) for name in reply]
        return [n for n in names if set(sites) <= set(n.split("@", 1)[0].split("+"))]

    try:
        wait_for(answered, timeout, f"a ping answer from worker {'+'.join(sites)}", step=0.05)
    finally:
        probe.close()


def start_collector(redis_url: str, inventory: Path, sites: tuple[str, ...], log: Path, timeout: float = 30) -> Proc:
    """`fleet collector` as its own process (observations keep flowing while workers are killed), ready when it
    says it is collecting (it says so once every site's listeners are up)."""
    collector = _spawn(["collector", "--inventory", str(inventory), *[a for s in sites for a in ("--site", s)]],
                       redis_url, log)

    def collecting() -> bool:
        _alive(collector, "collector")
        # the whole log: a chatty collector may have written more than a tail's worth after the line
        return collector.log.exists() and "collecting for" in collector.log.read_text(errors="replace")

    try:
        wait_for(collecting, timeout, f"collector for {', '.join(sites)} collecting")
    except BaseException:
        collector.stop()
        raise
    return collector


# ---------------------------------------------------------------- all of it, stopped in reverse order
class Harness:
    """Starts Redis, labs, workers and collectors under `work`; stops them in reverse order on exit.

        with Harness(work) as h:
            url = h.redis()
            lab = h.lab(spec)
            h.worker(lab.inventory, "hq")
    """

    def __init__(self, work: Path, redis_url: str | None = None) -> None:
        self.work = work
        self.redis_url = redis_url
        self.redis_pid: int | None = None
        self.procs: list[Proc] = []
        self._stack = ExitStack()

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def redis(self, appendonly: bool = False) -> str:
        """A private redis-server (soundpoint.redisboot): loopback, a fresh ACL password; its URL."""
        url, proc = start_private(self.work / "redis", appendonly=appendonly)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

        self._stack.callback(stop)
        self.redis_url, self.redis_pid = url, proc.pid
        return url

    def lab(self, spec: dict | Path, name: str = "lab", ready_timeout: float = 40, timeout: float | None = 90) -> Lab:
        work = self.work / name
        state = work / "state"
        # registered before it starts: a `hil up` that fails half-way still leaves a lab to take down
        self._stack.callback(lambda: Lab(state, work / "inventory.yml", {}).down())
        return start_lab(work, spec, ready_timeout, timeout)

    def _own(self, p: Proc) -> Proc:
        self.procs.append(p)
        self._stack.callback(p.stop)
        return p

    def worker(self, inventory: Path, site: str | tuple[str, ...], collect: bool = True, extra: tuple[str, ...] = (),
               log: Path | None = None, timeout: float = 30) -> Proc:
        name = site if isinstance(site, str) else "+".join(site)
        log = log or self.work / f"worker-{name}-{len(self.procs)}.log"
        return self._own(start_worker(self._url(), inventory, site, log, collect, extra, timeout))

    def workers(self, inventory: Path, sites: tuple[str, ...], per_site: int = 1, collect: bool = False,
                extra: tuple[str, ...] = ()) -> list[Proc]:
        """`per_site` workers on each site's queue, started one after another (each waits to be ready)."""
        return [self.worker(inventory, s, collect, extra) for s in sites for _ in range(per_site)]

    def collector(self, inventory: Path, sites: tuple[str, ...], log: Path | None = None, timeout: float = 30) -> Proc:
        log = log or self.work / f"collector-{len(self.procs)}.log"
        return self._own(start_collector(self._url(), inventory, sites, log, timeout))

    def _url(self) -> str:
        if not self.redis_url:
            raise HarnessError("start Redis (Harness.redis) or pass redis_url before starting workers")
        return self.redis_url
