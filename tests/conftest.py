"""Shared fixtures: a private Redis, virtual labs started with `hil up`, and real `fleet worker` processes.

The start-up itself (lab, workers, collector, each waited for on a condition) is
`hil.harness`, shared with the benchmarks and the demo; here are the pytest
lifetimes around it and the tests' default lab spec.

Nothing here touches the machine's own Redis or any address outside loopback:
each test session starts its own redis-server on a free port, and each lab
uses its own 127.N.x.x block.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from soundpoint.redisboot import free_port, start_private
from hil import harness
from hil.harness import Lab, Proc, start_collector, start_worker  # noqa: F401 (imported by test modules)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PORT_SLICES = 8     # xdist processes get a slice each of the listeners' ports (more processes share them in turn)
RUN_SLOTS = 2       # test runs on one machine at once that get ports of their own (two `make test` side by side);
                    # more slots would make each process's slice small enough to come round again within a run
                    # (4 slots gave 399 ports each, and two side-by-side runs lost a collector's port so)
_run_slot_lock = None   # the controller's hold on its run slot (a flock, dropped by the kernel when it ends)


def _port_block_of_this_run() -> range:
    """The ports this test run's processes hand out: a block of its own while it holds a run slot (an flock
    in hil.netlock's shared directory, the first of RUN_SLOTS free), so a second suite on the machine never picks
    a port the first picked minutes before binding it; the whole range when every slot is taken."""
    global _run_slot_lock
    import fcntl

    from hil import netlock
    from soundpoint import redisboot

    ports = redisboot.listener_ports()
    block = os.environ.get("SOUNDPOINT_TEST_PORT_BLOCK", "")      # set by the controller, inherited by xdist's
    if block:
        low, _, high = block.partition("-")
        return range(int(low), int(high))
    size = len(ports) // RUN_SLOTS
    for slot in range(RUN_SLOTS):
        handle = open(netlock.lock_dir() / f"test-run-{slot}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _run_slot_lock = handle
        found = range(ports.start + slot * size, ports.start + (slot + 1) * size)
        os.environ["SOUNDPOINT_TEST_PORT_BLOCK"] = f"{found.start}-{found.stop}"
        return found
    return ports


def _port_slice_of_this_process() -> None:
    """Each xdist process its own slice of the run's ports (soundpoint.redisboot.FREE_PORT_RANGE): a port one
    picks for a lab's collectors stays unbound until a worker binds it, minutes later, and another process
    picking from the same ports could take it meanwhile (a worker's collector: "Address already in use"). The
    controller (and a run without xdist) hands out from the whole of its run's block."""
    if "FREE_PORT_RANGE" in os.environ and "SOUNDPOINT_TEST_PORT_BLOCK" not in os.environ:
        return      # the user's own choice
    block = _port_block_of_this_run()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    size = len(block) // PORT_SLICES
    if worker.startswith("gw") and worker[2:].isdigit() and size >= 200:
        low = block.start + int(worker[2:]) % PORT_SLICES * size
        os.environ["FREE_PORT_RANGE"] = f"{low}-{low + size}"
    elif block:
        os.environ["FREE_PORT_RANGE"] = f"{block.start}-{block.stop}"


_port_slice_of_this_process()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """The session's redis-server: default user off; `fleet` (what the code under test uses) and `admin`
    (MONITOR, for tests that watch every command) with random passwords."""
    admin = secrets.token_urlsafe(24)
    url, proc = start_private(tmp_path_factory.mktemp("redis"), admin_password=admin)
    yield url, f"redis://admin:{admin}@{url.rsplit('@', 1)[1]}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def redis_url(redis_server):
    """The session's Redis, emptied for each test module that uses it. Lab nets, and so phone MACs, come round
    again within a suite (hil.netlock), and a phone's records outlive its lab: kept, a module's lab would inherit
    the evidence, rollout stacks and incidents of an earlier module's phones. The modules of one test process run
    one after another, and pytest ends a module's fixtures (its workers, collectors and labs) before the next
    module's begin, so nobody is using it then. One URL for the whole session: the in-process Celery app keeps
    the broker it was first configured with."""
    import redis

    admin = redis.Redis.from_url(redis_server[1])
    try:
        admin.flushdb()
    finally:
        admin.close()
    return redis_server[0]


@pytest.fixture(scope="session")
def redis_admin_url(redis_server):
    return redis_server[1]


# A one-site inventory with one phone, for unit tests of loading and validation (no lab behind it).
SMALL_INVENTORY = """name: lab
secrets_file: secrets.yml
provider: {name: voip.example}
sites:
  - name: hq
    gateway: 127.10.0.1
    boot_server: {url: "http://127.10.0.3/", credentials: boot}
    router: {driver: linux_ssh, address: 127.10.0.1, credentials: r, wan_interface: wan0}
    phones:
      - {mac: "0004f2000001", model: VVX 410, address: 127.0.0.2, credentials: admin}
"""


@contextlib.contextmanager
def router_driver(inventory_path: Path):
    """The router driver of the inventory's first site, connected with its credentials; closed on exit."""
    from fleet.config import inventory
    from fleet.drivers import router as routers

    inv = inventory.load(str(inventory_path))
    site = inv.sites[0]
    d = routers.connect(site.router, inventory.Secrets(inv).credentials(site.router.credentials))
    try:
        yield d
    finally:
        d.close()


def directory_files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (path relative to it) and its bytes. A worker may remove a file between the
    listing and the read (a rollout's cleanup running while a test's wait polls the boot directory): such a file
    is gone, not an error."""
    files = {}
    for p in sorted(root.rglob("*")):
        try:
            if p.is_file():
                files[str(p.relative_to(root))] = p.read_bytes()
        except FileNotFoundError:
            continue
    return files


def unique_id(prefix: str, name: str) -> str:
    """An id no other test run uses (outage ids are remembered by the router and the store): prefix-name-8 hex."""
    return f"{prefix}-{name}-{uuid.uuid4().hex[:8]}"


def require_loopback_capture() -> None:
    """Skip the calling test unless tcpdump can capture on `lo` here (it needs tcpdump and CAP_NET_RAW)."""
    from fleet.evidence.sources.local_capture import CaptureUnavailable, check_capture

    try:
        check_capture("lo")
    except CaptureUnavailable as exc:
        pytest.skip(str(exc))


def udp_socket(timeout: float | None = None) -> socket.socket:
    """A UDP socket bound to a free port on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout)
    return sock


def start_lab(work: Path, spec: dict | Path, **kwargs) -> Lab:
    """hil.harness.start_lab. A lab file without `net` takes a free one (hil.netlock): test modules run in parallel,
    and two suites may run side by side, so tests never fix a net; they read addresses from the lab (`lab.net`,
    its inventory)."""
    return harness.start_lab(work, spec, **kwargs)


RunningLab = Lab      # older names, still imported by test modules
Worker = Proc


def listen_port() -> int:
    """A free port for a listener to bind later: soundpoint.redisboot.free_port, which picks it from below the
    ephemeral range so no outgoing connection takes it meanwhile."""
    return free_port()


def lab_spec(name: str, *, net: int | str = "auto", phones: int = 4, servers: list[dict] | None = None, models=None,
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
            "collector": {"syslog": f"127.0.0.1:{listen_port()}", "events": f"127.0.0.1:{listen_port()}",
                          "poll_interval": poll_interval},
        }],
    }


@pytest.fixture(scope="module")
def lab_factory(tmp_path_factory):
    labs: list[RunningLab] = []

    started: list[Path] = []

    def make(spec: dict) -> RunningLab:
        work = tmp_path_factory.mktemp(spec["name"])
        started.append(work)     # before it starts: a lab that came up but timed out waiting for phones goes too
        lab = start_lab(work, spec)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()
        for work in started[len(labs):]:
            harness.stop_state(work / "state")


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


def agrees_with_truth(measured_s: float | None, answered: float, asked: float | None, truth_t: float | None,
                      sample: float = 0.25) -> bool:
    """Whether a measured failover or recovery (seconds from the router's answer `answered`) agrees with the
    lab's truth: within `sample` of it, or, measured 0 (fleet.experiment.verdict.caused_change: the phone moved
    between the request `asked` and the answer), with the truth's move inside that window."""
    if measured_s is None or truth_t is None:
        return False
    if measured_s == 0 and asked is not None and asked - sample <= truth_t <= answered + sample:
        return True
    return abs(answered + measured_s - truth_t) <= sample


def wait_until(cond, timeout: float, what: str, step: float = 0.1, state=None):
    """Poll `cond` until it returns something truthy; past `timeout`, fail naming `what` and the last value seen
    (or what `state()` returns then, when the last value alone would say little)."""
    from soundpoint.deadline import poll_until

    value = poll_until(cond, timeout, step)
    if not value:
        raise AssertionError(f"{what} not reached within {timeout}s (last seen: {state() if state else value!r})")
    return value


async def await_until(cond, timeout: float, what: str, step: float = 0.05, state=None, fail: bool = True):
    """`wait_until` for code on an event loop: `cond` is checked between awaits, so the loop keeps serving.
    `state`, if given, is called on failure for what to show instead of the last value of `cond`; with
    `fail=False` the last value is returned instead, for a caller that asserts on the outcome itself."""
    import asyncio

    from soundpoint.deadline import Deadline

    deadline = Deadline(timeout)
    while True:
        value = cond()
        if value or deadline.expired:
            break
        await asyncio.sleep(min(step, deadline.remaining()))
    if not value and fail:
        raise AssertionError(f"{what} not reached within {timeout}s (last seen: {state() if state else value!r})")
    return value


def write_rollout_playbook(path: Path, name: str, canary: int, deadline: float, within: float) -> Path:
    """A rollout that shortens server 1's expiry to 12 s and verifies every phone on both servers afterwards."""
    path.write_text(yaml.safe_dump({
        "kind": "rollout", "name": name, "params": {"reg.1.server.1.expires": 12},
        "strategy": {"canary": canary, "wave_size": 2, "max_unavailable": 2, "failure_budget": {"total": 0},
                     "progress_deadline": deadline},
        "verify": {"registered_to": [1, 2], "within": within}, "rollback": True}))
    return path


def both_registered(lab: Lab, site: str, redis_url: str) -> bool:
    """Whether `fleet status` shows every phone of the lab's first site registered with servers 1 and 2 (what the
    worker's collector heard: an experiment's baseline and fallback need both)."""
    macs = {p["mac"] for p in yaml.safe_load(lab.inventory.read_text())["sites"][0]["phones"]}
    rows = [r for r in json.loads(run_fleet(["status", "--site", site, "--json"], redis_url).stdout or "[]")
            if r["mac"] in macs]
    states = {r["mac"]: {s["index"]: s["state"] for s in r["servers"]} for r in rows}
    return len(states) == len(macs) and all(st.get(1) == st.get(2) == "registered" for st in states.values())


def run_fleet(args: list[str], redis_url: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLEET_REDIS_URL=redis_url)
    return subprocess.run([BIN / "fleet", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------- test order: longest files first
# `make test` spreads files over three processes (--dist loadfile), handing each process the next file in collection
# order as it frees up. Files in collection (alphabetical) order leave a long file such as test_rollout_faults.py
# to start near the end and run alone; longest first (each file's seconds in a full run, tests/file_seconds.json,
# refreshed by hand from `--durations=0` when files grow) keeps the three busy to the end. The order of tests within
# a file is kept.
FILE_SECONDS = json.loads((Path(__file__).parent / "file_seconds.json").read_text())


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))
