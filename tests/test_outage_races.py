"""The races of a cut and its restore, replayed against the Linux router's command table in a real shell.

The router is the lab's: a real SSH server whose commands run in /bin/sh,
with the dead-man's switch a real background process of that shell. The
tasks are the real `router_outage`/`router_restore` task bodies, run on
threads of this process against the lab, as two workers would run them. After
every race: the link is up, no rule or qdisc of ours is left, whatever the
site had before is intact, no dead-man is left behind, and the outcome says
what the router did.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, lab_spec, router_driver, run_fleet, unique_id, wait_until
from fleet.experiment import tasks
from fleet.worker import context as worker_context
from fleet.drivers.router import Outage
from fleet.state.store import Store
from fleet.worker.errors import TaskFailed

pytestmark = pytest.mark.slow

SITE_RULE = "-i lan0 -p udp --dport 5999 -m comment --comment site-qos -j ACCEPT"


@pytest.fixture(scope="module")
def lab(lab_factory):
    return lab_factory(lab_spec("races", phones=2, site="edge"))


@pytest.fixture
def on_worker(lab, redis_url, monkeypatch):
    """This process plays the worker: the task bodies read the inventory and Redis from the environment."""
    monkeypatch.setenv("FLEET_INVENTORY", str(lab.inventory))
    monkeypatch.setenv("FLEET_REDIS_URL", redis_url)
    worker_context.reset()
    yield
    worker_context.reset()
    lab.post("/router-fault", {"site": "edge", "slow": {}})


@pytest.fixture
def drv(lab):
    with router_driver(lab.inventory) as d:
        yield d


_oid = functools.partial(unique_id, "race")   # a fresh outage id per call


def _o(oid: str, mode: str, max_duration: int = 60, **degrade) -> Outage:
    return Outage(id=oid, mode=mode, max_duration=max_duration, **degrade)


def _wan(lab) -> dict:
    return lab.status()["sites"][0]["router"]["wan_state"]


def _state_dir(lab) -> Path:
    return Path(yaml.safe_load(lab.inventory.read_text())["sites"][0]["router"]["state_dir"])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _deadman_pids(lab, oid: str) -> list[int]:
    pids = []
    for suffix in ("deadman", "sleep"):
        f = _state_dir(lab) / f"{oid}.{suffix}"
        if f.exists() and f.read_text().strip().isdigit():
            pids.append(int(f.read_text()))
    return pids


_wait = wait_until


def assert_back_as_found(lab, oid: str, before: dict) -> None:
    """The WAN is up, nothing of ours is left, the site's own rule and qdisc are as they were, no dead-man lingers."""
    wan = _wan(lab)
    assert wan["admin_up"] is True, wan
    assert not [r for r in wan["rules"] if "fleet-" in r], wan["rules"]
    assert wan["rules"] == before["rules"], (before["rules"], wan["rules"])
    assert wan["root_qdisc"] == before["root_qdisc"], (before["root_qdisc"], wan["root_qdisc"])
    assert sorted(wan["routes"]) == sorted(before["routes"]), (before["routes"], wan["routes"])
    live = [p for p in _deadman_pids(lab, oid) if _alive(p)]
    assert not live, f"dead-man processes still running: {live}"


@pytest.fixture
def site_config(lab, drv):
    """A site rule the router had before us; every test checks it survives."""
    drv.run(f"iptables -w -A FORWARD {SITE_RULE}")
    before = _wan(lab)
    yield before
    drv.run(f"iptables -w -D FORWARD {SITE_RULE}", check=False)


def test_restore_before_cut_cancels_the_cut(lab, on_worker, drv, site_config):
    oid = _oid("first")
    restore = tasks.router_restore("edge", "exp-race", _o(oid, "link-down"), 0)
    assert restore["outcome"] == "cancelled-before-cut", restore
    cut = tasks.router_outage("edge", "exp-race", _o(oid, "link-down"))
    assert cut["outcome"] == "cancelled", cut
    # and on the router itself, without the worker's Redis guard: the late cut finds the cancellation there
    oid2 = _oid("router-first")
    assert drv.restore(_o(oid2, "link-down")).outcome == "cancelled-before-cut"
    late = drv.cut(_o(oid2, "link-down"))
    assert late.outcome == "cancelled" and late.state.link_up is True
    assert_back_as_found(lab, oid, site_config)
    assert_back_as_found(lab, oid2, site_config)


def test_restore_between_arming_and_cutting_waits_for_the_cut_and_undoes_it(lab, on_worker, site_config):
    oid = _oid("between")
    lab.post("/router-fault", {"site": "edge", "slow": {"link set": 2.0}})
    results: dict[str, dict] = {}
    cutter = threading.Thread(target=lambda: results.update(cut=tasks.router_outage("edge", "exp-race", _o(oid, "link-down"))))
    cutter.start()
    # the dead-man is armed (its pid file exists) while `ip link set ... down` is still running
    _wait(lambda: (_state_dir(lab) / f"{oid}.deadman").exists(), 10, "the dead-man's switch armed")
    results["restore"] = tasks.router_restore("edge", "exp-race", _o(oid, "link-down"), 5)
    cutter.join(30)
    assert not cutter.is_alive(), "the cut task never returned"
    restore, cut = results["restore"], results["cut"]
    assert restore["outcome"] == "restored" and restore["by"] == "controller", restore
    assert restore["state"]["link_up"] is True and restore["state"]["outage"] == "restored by controller", restore
    assert cut["outcome"] == "cancelled", cut
    history = [h["change"] for h in lab.status()["sites"][0]["router"]["history"]]
    assert history[-2:] == ["link up", "route default via 203.0.113.1 proto static"], history[-6:]
    assert_back_as_found(lab, oid, site_config)


def test_redelivered_cut_adds_nothing_and_restore_removes_exactly_ours(lab, on_worker, drv, site_config):
    oid = _oid("redeliver")
    first = tasks.router_outage("edge", "exp-race", _o(oid, "drop"))
    again = tasks.router_outage("edge", "exp-race", _o(oid, "drop"))
    assert first["outcome"] == "cut" and again["outcome"] == "already-cut", (first, again)
    ours = [r for r in _wan(lab)["rules"] if f"fleet-{oid}" in r]
    assert len(ours) == 2, ours      # one in, one out: the second delivery added nothing
    assert first["state"]["dropping"] is True
    restore = tasks.router_restore("edge", "exp-race", _o(oid, "drop"), 5)
    assert restore["outcome"] == "restored" and restore["state"]["rules_ours"] == 0, restore
    again = tasks.router_restore("edge", "exp-race", _o(oid, "drop"), 0)
    assert again["outcome"] == "already-restored" and again["by"] == "controller", again
    assert_back_as_found(lab, oid, site_config)


def test_a_lock_left_by_a_killed_script_does_not_block_the_restore(lab, on_worker, site_config):
    """A script killed outright on the router (SIGKILL, no EXIT trap) leaves its lock; the next one breaks it."""
    oid = _oid("stale-lock")
    assert tasks.router_outage("edge", "exp-race", _o(oid, "drop"))["outcome"] == "cut"
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = _state_dir(lab) / f"{oid}.lock"
    lock.mkdir()
    (lock / "pid").write_text(f"{gone.pid}\n")
    restore = tasks.router_restore("edge", "exp-race", _o(oid, "drop"), 0)
    assert restore["outcome"] == "restored", restore
    assert not lock.exists()
    assert_back_as_found(lab, oid, site_config)


def test_degrade_leaves_the_sites_own_qdisc_alone(lab, on_worker, drv, site_config):
    drv.run("tc qdisc add dev wan0 root handle 1: htb default 10")
    try:
        before = _wan(lab)
        assert before["root_qdisc"].startswith("htb 1:")
        # a delay needs the root qdisc: refused before anything changes
        oid = _oid("qdisc-delay")
        with pytest.raises(TaskFailed, match="own root qdisc"):
            tasks.router_outage("edge", "exp-race", _o(oid, "degrade", delay_ms=200))
        assert_back_as_found(lab, oid, before)
        # loss alone is a rule, not a qdisc: allowed, and the qdisc survives the restore
        oid = _oid("qdisc-loss")
        lossy = _o(oid, "degrade", loss=0.3)
        cut = tasks.router_outage("edge", "exp-race", lossy)
        assert cut["state"]["degraded"] is True and cut["state"]["qdisc_ours"] is False, cut
        assert _wan(lab)["loss"] == pytest.approx(0.3)
        tasks.router_restore("edge", "exp-race", lossy, 0)
        assert_back_as_found(lab, oid, before)
    finally:
        drv.run("tc qdisc del dev wan0 root", check=False)
    # with the kernel's default root qdisc, a delay adds ours and the restore takes exactly it away
    oid = _oid("netem")
    delayed = _o(oid, "degrade", delay_ms=150)
    cut = tasks.router_outage("edge", "exp-race", delayed)
    assert cut["state"]["qdisc_ours"] is True and _wan(lab)["delay"] == pytest.approx(0.15), cut
    tasks.router_restore("edge", "exp-race", delayed, 0)
    assert_back_as_found(lab, oid, site_config)


def test_a_degrade_by_rate_alone_puts_our_tbf_on_the_wan_and_the_restore_takes_it_away(lab, on_worker, site_config):
    """rate_kbit without delay is tc's tbf (kernels without netem have it), under our handle, as the task asked."""
    throttled = _o(_oid("rate"), "degrade", rate_kbit=256)
    cut = tasks.router_outage("edge", "exp-race", throttled)
    assert cut["outcome"] == "cut" and cut["state"]["qdisc_ours"] is True and cut["state"]["degraded"] is True, cut
    assert _wan(lab)["root_qdisc"].startswith("tbf 1fe1: rate 256kbit "), _wan(lab)["root_qdisc"]
    assert tasks.router_restore("edge", "exp-race", throttled, 0)["outcome"] == "restored"
    assert_back_as_found(lab, throttled.id, site_config)


def test_cut_task_past_its_expiry_never_runs(lab, worker_factory, redis_url):
    from datetime import datetime, timedelta, timezone

    from celery import Celery

    worker_factory(lab.inventory, "edge")
    app = Celery(broker=redis_url, backend=redis_url)
    before = len(lab.status()["sites"][0]["router"]["commands"])
    try:
        res = app.send_task("fleet.router_outage", args=["edge", "exp-race", _o(_oid("expired"), "link-down").to_dict()],
                            queue="site.edge", expires=datetime.now(timezone.utc) - timedelta(seconds=1))
        with pytest.raises(Exception, match="revoked|Revoked|expired"):
            res.get(timeout=20)
    finally:
        app.close()
    assert len(lab.status()["sites"][0]["router"]["commands"]) == before
    assert _wan(lab)["admin_up"] is True


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_signal_to_the_controller_mid_cut_restores_and_reports(lab, worker_factory, redis_url, tmp_path, signame, drv,
                                                               site_config):
    worker_factory(lab.inventory, "edge")
    lab.post("/router-fault", {"site": "edge", "slow": {"link set": 2.0}})
    pb = tmp_path / "long.yml"
    pb.write_text("kind: experiment\nname: long\nsite: edge\nsteps:\n"
                  "  - {name: cut, outage: link-down, max_duration: 300}\n  - {name: linger, wait: 120}\n"
                  "  - {name: back, restore: true}\n")
    env = dict(os.environ, FLEET_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    reports = tmp_path / "reports"
    console = tmp_path / "run.out"   # a file, not a pipe: the test reads it while the run goes on
    with open(console, "w") as sink:
        proc = subprocess.Popen([BIN / "fleet", "experiment", "run", str(pb), "--inventory", str(lab.inventory),
                                 "--report-dir", str(reports)], env=env, stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        # mid-cut: the dead-man is armed and `ip link set ... down` is still running on the router
        deadman = _wait(lambda: sorted(_state_dir(lab).glob("*-o1.deadman"), key=lambda p: p.stat().st_mtime)[-1:]
                        and time.time() - sorted(_state_dir(lab).glob("*-o1.deadman"), key=lambda p: p.stat().st_mtime)[-1].stat().st_mtime < 3,
                        30, "the experiment's cut in progress")
        assert deadman
        proc.send_signal(getattr(signal, signame))
        wait_until(lambda: "restoring the WAN (cleanup)" in console.read_text(), 30, "the controller's cleanup under way",
                   state=lambda: console.read_text()[-1000:])
        proc.send_signal(signal.SIGINT)          # a second signal during the cleanup must not skip it
        proc.wait(60)
        out = console.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        lab.post("/router-fault", {"site": "edge", "slow": {}})
    assert proc.returncode == 130, out[-2000:]
    doc = json.loads(next(reports.glob("*/report.json")).read_text())
    assert doc["interrupted"] == signame and not doc["passed"], doc["errors"]
    outage = doc["outages"][0]
    assert outage["restore"] == "restored" and outage["confirmed"].startswith("restored by the controller"), outage
    assert any("SIGINT received while the WAN was being restored" in e for e in doc["errors"]), doc["errors"]
    assert_back_as_found(lab, outage["id"], site_config)
    # the experiment is finished in the store and no longer observing the site
    shown = run_fleet(["experiment", "show", doc["id"], "--json"], redis_url)
    assert json.loads(shown.stdout)["experiment"]["status"] == "interrupted", shown.stdout[-500:]
    assert Store(redis_url).observing("edge") is None


@pytest.fixture
def snmp_worker(lab, redis_url, monkeypatch, tmp_path):
    """The same site with its router driven over SNMP (v2c), as the inventory of an SNMP-only router says."""
    def use(allow: bool) -> None:
        doc = yaml.safe_load(lab.inventory.read_text())
        doc["sites"][0]["router"] = {**{k: v for k, v in doc["sites"][0]["router"].items() if k not in ("known_hosts", "state_dir")},
                                     "driver": "snmp", "port": 1161, "snmp_version": "2c", "credentials": "router_snmp_v2c",
                                     "allow_without_deadman": allow, "timeout": 3}
        path = tmp_path / f"snmp-{allow}.yml"
        path.write_text(yaml.safe_dump(doc))
        monkeypatch.setenv("FLEET_INVENTORY", str(path))
        worker_context.reset()

    monkeypatch.setenv("FLEET_REDIS_URL", redis_url)
    yield use
    worker_context.reset()


def test_snmp_router_refuses_without_deadman_and_says_so_when_allowed(lab, snmp_worker):
    snmp_worker(False)
    with pytest.raises(TaskFailed, match="no dead-man's switch"):
        tasks.router_outage("edge", "exp-race", _o(_oid("snmp-no"), "link-down"))
    assert _wan(lab)["admin_up"] is True
    snmp_worker(True)
    oid = _oid("snmp-yes")
    cut = tasks.router_outage("edge", "exp-race", _o(oid, "link-down"))
    assert cut["outcome"] == "cut" and cut["deadman"].startswith("none: SNMP"), cut
    assert cut["has_deadman"] is False and _wan(lab)["admin_up"] is False
    restore = tasks.router_restore("edge", "exp-race", _o(oid, "link-down"), 5)
    assert restore["outcome"] == "restored" and restore["state"]["link_up"] is True, restore
    # SNMP keeps no outage state on the router: the worker's guard in Redis cancels a cut that comes after its restore
    late = _oid("snmp-late")
    tasks.router_restore("edge", "exp-race", _o(late, "link-down"), 0)   # a failed restore raises TaskFailed
    assert tasks.router_outage("edge", "exp-race", _o(late, "link-down"))["outcome"] == "cancelled"
    assert _wan(lab)["admin_up"] is True


_SECOND_CONTROLLER = """
import json, sys
from fleet.experiment import tasks
from fleet.worker.errors import TaskFailed
try:
    outage = {"id": sys.argv[1], "mode": sys.argv[2], "max_duration": 60}    # as a task message carries it
    print(json.dumps({"outcome": tasks.router_outage("edge", "exp-other", outage)["outcome"]}))
except TaskFailed as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def _other_controller(lab, redis_url: str, oid: str, mode: str, inventory: Path | None = None) -> dict:
    """A second controller: its own process, its own SSH connection to the router, its own experiment (and its
    own inventory, if given)."""
    env = dict(os.environ, FLEET_INVENTORY=str(inventory or lab.inventory), FLEET_REDIS_URL=redis_url)
    res = subprocess.run([BIN / "python", "-c", _SECOND_CONTROLLER, oid, mode], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_two_controllers_one_wan_the_second_outage_is_refused_and_the_first_restore_ends_only_the_first(
        lab, on_worker, redis_url, site_config):
    first, second, drop, later = _oid("wan-a"), _oid("wan-b"), _oid("wan-c"), _oid("wan-d")
    assert tasks.router_outage("edge", "exp-race", _o(first, "link-down"))["outcome"] == "cut"
    try:
        for oid, mode in ((second, "link-down"), (drop, "drop")):
            answer = _other_controller(lab, redis_url, oid, mode)
            assert "refused" in answer, f"a second {mode} on a WAN already down answered {answer}"
            assert f"already in outage {first}" in answer["refused"], answer
        assert _wan(lab)["rules"] == site_config["rules"], "the refused drop left rules behind"
    finally:
        restore = tasks.router_restore("edge", "exp-race", _o(first, "link-down"), 5)
    assert restore["outcome"] == "restored" and restore["state"]["link_up"] is True, restore
    # once the first is restored the interface is free again; a repeated restore of the first does not end it
    assert _other_controller(lab, redis_url, later, "link-down") == {"outcome": "cut"}
    try:
        assert tasks.router_restore("edge", "exp-race", _o(first, "link-down"), 0)["outcome"] == "already-restored"
        assert _wan(lab)["admin_up"] is False, "the first outage's restore ended the second one"
    finally:
        assert tasks.router_restore("edge", "exp-race", _o(later, "link-down"), 5)["outcome"] == "restored"
    for oid in (first, second, drop, later):
        assert_back_as_found(lab, oid, site_config)


def test_two_controllers_with_their_own_state_dirs_see_one_wan_lock_in_every_mode(lab, on_worker, redis_url,
                                                                                 site_config, tmp_path):
    """Two inventories of the one router, each with its own state_dir: the WAN lock is the router's (its
    wan_lock_dir), not the controller's, so a drop or dns-fail of the second on a WAN the first holds with a drop
    (the link still up: no "already down" check can catch it) is refused and adds nothing."""
    doc = yaml.safe_load(lab.inventory.read_text())
    doc["sites"][0]["router"]["state_dir"] = str(tmp_path / "second-controller" / "outages")
    second_inventory = tmp_path / "second.yml"
    second_inventory.write_text(yaml.safe_dump(doc))
    first, later = _oid("own-a"), _oid("own-d")
    assert tasks.router_outage("edge", "exp-race", _o(first, "drop"))["outcome"] == "cut"
    try:
        ours = [r for r in _wan(lab)["rules"] if f"fleet-{first}" in r]
        for mode in ("drop", "dns-fail"):
            answer = _other_controller(lab, redis_url, _oid("own-b"), mode, second_inventory)
            assert "refused" in answer, f"a {mode} by a second controller on a WAN in outage answered {answer}"
            assert f"already in outage {first}" in answer["refused"], answer
        assert [r for r in _wan(lab)["rules"] if "fleet-" in r] == ours, "the refused cuts left rules behind"
    finally:
        restore = tasks.router_restore("edge", "exp-race", _o(first, "drop"), 5)
    assert restore["outcome"] == "restored", restore
    # the first restored, the interface is free for the second controller; its restore is its own
    assert _other_controller(lab, redis_url, later, "drop", second_inventory) == {"outcome": "cut"}
    with router_driver(second_inventory) as second:
        assert second.restore(_o(later, "drop")).outcome == "restored"
    assert_back_as_found(lab, first, site_config)


@pytest.fixture
def state_dir_worker(lab, redis_url, monkeypatch, tmp_path):
    """The same site with its outage directory at a given path on the router (the lab's router is this host)."""
    def use(state_dir: Path) -> None:
        doc = yaml.safe_load(lab.inventory.read_text())
        doc["sites"][0]["router"]["state_dir"] = str(state_dir)
        path = tmp_path / "state-dir.yml"
        path.write_text(yaml.safe_dump(doc))
        monkeypatch.setenv("FLEET_INVENTORY", str(path))
        worker_context.reset()

    monkeypatch.setenv("FLEET_REDIS_URL", redis_url)
    yield use
    worker_context.reset()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_dir_whose_parent_another_user_owns_or_a_shared_tmp_is_refused_before_the_cut(lab, state_dir_worker,
                                                                                               tmp_path):
    """Another user owning a parent could swap in the directory (and the restore the dead-man runs as root);
    a sticky world-writable one (/tmp: the stand-in here, never the real one) is nobody's own."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    for state_dir, why in ((theirs / "outages", "belongs to uid 65534"), (shared, "writable by group or others")):
        state_dir_worker(state_dir)
        before = len(lab.status()["sites"][0]["router"]["commands"])
        with pytest.raises(TaskFailed, match=why):
            tasks.router_outage("edge", "exp-race", _o(_oid("unsafe-dir"), "link-down"))
        assert _wan(lab)["admin_up"] is True
        assert len(lab.status()["sites"][0]["router"]["commands"]) == before, "the router ran commands for the cut"
    assert not (theirs / "outages").exists() and shared.stat().st_mode & 0o7777 == 0o1777
