"""Issue 19: what `fleet experiment run` says is true and points the right way.

- a cut that never reached the router says so (no "restore the WAN by hand"), and the report draws no outage band;
- a stopped run prints INTERRUPTED, is listed as interrupted and exits 130;
- a playbook of the other kind is named as such, with the command that runs it;
- a run refused for a held lease names the holder by the id `fleet experiment list` shows.

Real Redis, real `fleet` processes and a real worker; the router is an address where nothing listens.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import BIN, run_fleet, start_worker, wait_until
from fleet.config import inventory
from fleet.experiment.failures import NotReached
from fleet.experiment.playbook import ExperimentPlaybook
from fleet.experiment.runner import ExperimentRunner
from fleet.experiment.sent_task import SentTask
from fleet.state.store import LeaseHeld, Store
from fleet.worker.app import app, configure
from fleet.worker.errors import DeviceNotReached
from soundpoint.redisboot import free_port


def _inventory(tmp: Path, site: str, router_port: int = 22) -> Path:
    secrets = tmp / "secrets.yml"
    secrets.write_text(yaml.safe_dump({"admin": {"username": "Polycom", "password": "x-admin"},
                                       "router": {"username": "root", "password": "x-router"}}))
    secrets.chmod(0o600)
    doc = {"name": "t", "secrets_file": "secrets.yml", "firmware_family": "uc-5.x",
           "sites": [{"name": site, "gateway": "127.0.0.1", "boot_server": {"url": f"file://{tmp}/"},
                      "router": {"driver": "linux_ssh", "address": "127.0.0.1", "port": router_port,
                                 "credentials": "router", "wan_interface": "wan0", "timeout": 3},
                      "params": {"reg.1.server.1.address": "voip.example"},
                      "phones": [{"mac": "0004f2000001", "model": "VVX 410", "address": "127.0.0.2",
                                  "credentials": "admin"}]}]}
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _playbook(tmp: Path, site: str, steps: list[dict], kind: str = "experiment") -> Path:
    path = tmp / f"{kind}-{uuid.uuid4().hex[:6]}.yml"
    path.write_text(yaml.safe_dump({"kind": kind, "name": "t", "site": site, "steps": steps}, sort_keys=False))
    return path


def _site() -> str:
    return f"m{uuid.uuid4().hex[:6]}"


def test_a_router_never_reached_is_said_so_and_draws_no_outage(redis_url, tmp_path, monkeypatch):
    """The cut cannot connect to the router: the WAN was never cut, so no restore is asked of anyone and the
    report's timeline has no outage band."""
    monkeypatch.setenv("COLUMNS", "400")     # one line per message
    site = _site()
    inv = _inventory(tmp_path, site, router_port=free_port())     # nothing listens there
    pb = _playbook(tmp_path, site, [{"name": "cut the WAN", "outage": "link-down", "max_duration": 60},
                                    {"name": "bring it back", "restore": True}])
    worker = start_worker(redis_url, inv, site, tmp_path / "worker.log", collect=False)
    try:
        res = run_fleet(["experiment", "run", str(pb), "--inventory", str(inv), "--report-dir", str(tmp_path / "r"),
                         "--task-timeout", "30"], redis_url, timeout=120)
    finally:
        worker.stop()
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "the router at 127.0.0.1 was not reached: the WAN was never cut" in out, out
    assert "by hand" not in out, out
    [report_dir] = (tmp_path / "r").iterdir()
    doc = json.loads((report_dir / "report.json").read_text())
    [outage] = doc["outages"]
    assert outage["wan_cut"] == "no" and outage["confirmed"].endswith("the WAN was never cut"), outage
    assert outage["restore"] == "not needed", outage
    html = (report_dir / "report.html").read_text()
    assert 'class="outage"' not in html


def test_a_cut_that_may_have_been_made_still_draws_its_band(redis_url, tmp_path, monkeypatch):
    """The other side of the rule: a cut with no usable answer may have happened, so the band stays."""
    from fleet.experiment import report, sent_task as sent_task_mod
    from fleet.worker.errors import TaskFailed

    configure(redis_url)
    monkeypatch.setattr(sent_task_mod.SentTask, "send", staticmethod(_failing_send(TaskFailed("router: SSH error"))))
    result = _runner(tmp_path, Store(redis_url), [{"name": "cut", "outage": "link-down", "max_duration": 30}]).run()
    [outage] = result.outages
    assert outage["wan_cut"] == "maybe"
    report.write(result, tmp_path / "rep")
    assert 'class="outage"' in (tmp_path / "rep" / "report.html").read_text()


def test_a_not_reached_answer_survives_the_result_backend(redis_url):
    configure(redis_url)
    sent = SentTask("fleet.router_outage", uuid.uuid4().hex, "site.hq", "hq", time.time(), 60)
    app.backend.mark_as_failure(sent.id, DeviceNotReached("router 127.0.0.1:2: cannot connect (Connection refused)"))
    with pytest.raises(NotReached, match="cannot connect"):
        sent.answer()


def _failing_send(exc: BaseException):
    def send(sig, queue, site, timeout, expires=None):
        sent = SentTask(sig.task, uuid.uuid4().hex, queue, site, time.time(), timeout)
        app.backend.mark_as_failure(sent.id, exc)
        return sent
    return send


def _runner(tmp_path: Path, store: Store, steps: list[dict]) -> ExperimentRunner:
    site = _site()
    inv = inventory.load(_inventory(tmp_path, site))
    pb = ExperimentPlaybook.model_validate({"kind": "experiment", "name": "x", "site": site, "steps": steps})
    return ExperimentRunner(pb, inv, store, task_timeout=5)


def test_an_interrupted_experiment_says_so_is_listed_so_and_exits_130(redis_url, tmp_path):
    site = _site()
    inv = _inventory(tmp_path, site)
    pb = _playbook(tmp_path, site, [{"name": "a long wait", "wait": 300}])
    store = Store(redis_url)
    proc = subprocess.Popen([BIN / "fleet", "experiment", "run", str(pb), "--inventory", str(inv),
                             "--report-dir", str(tmp_path / "r")],
                            env=dict(os.environ, FLEET_REDIS_URL=redis_url, COLUMNS="200"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = wait_until(lambda: next((e for e in store.experiments() if e.get("site") == site), None), 60,
                             "the experiment's record", state=lambda: proc.poll())
        wait_until(lambda: any(e["kind"] == "start" for e in store.events(running["id"])), 30, "its start event")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "INTERRUPTED (SIGINT) after 0 of 1 step; no verdict on the phones" in out, out
    assert "FAILED" not in out and "0/1 phone" not in out, out
    assert not any(line.strip() == "" or line.rstrip().endswith(":") for line in out.splitlines()), out
    assert store.experiment(running["id"])["status"] == "interrupted"
    listed = run_fleet(["experiment", "list", "--json"], redis_url)
    assert {e["id"]: e["status"] for e in json.loads(listed.stdout)}[running["id"]] == "interrupted"
    table = subprocess.run([BIN / "fleet", "experiment", "list"], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, FLEET_REDIS_URL=redis_url, COLUMNS="200"))
    assert any(running["id"] in line and "interrupted" in line for line in table.stdout.splitlines()), table.stdout


@pytest.mark.parametrize("given, command, other", [("rollout", "experiment", "fleet rollout run"),
                                                   ("experiment", "rollout", "fleet experiment run")])
def test_a_playbook_of_the_other_kind_is_pointed_to_its_command(given, command, other, tmp_path):
    site = _site()
    inv = _inventory(tmp_path, site)
    if given == "rollout":
        pb = tmp_path / "expiry.yml"
        pb.write_text(yaml.safe_dump({"kind": "rollout", "name": "t", "params": {"reg.1.server.1.expires": 60},
                                      "strategy": {"canary": 0, "wave_size": 1}}, sort_keys=False))
    else:
        pb = _playbook(tmp_path, site, [{"name": "w", "wait": 1}])
    res = subprocess.run([BIN / "fleet", command, "run", str(pb), "--inventory", str(inv)], capture_output=True,
                         text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "FLEET_REDIS_URL"}
                         | {"COLUMNS": "400"})
    assert res.returncode == 2, res.stderr
    assert f"{pb}:1: kind: {pb} is a{'n' if given == 'experiment' else ''} {given} playbook (kind: {given}): " \
           f"use `{other} {pb}`" in res.stderr, res.stderr
    assert "unknown field" not in res.stderr


def test_a_held_lease_names_the_id_experiment_list_shows(redis_url, tmp_path):
    store = Store(redis_url)
    first = _runner(tmp_path, store, [{"name": "w", "wait": 1}])
    first.open()
    try:
        second = ExperimentRunner(first.pb, first.inv, store)
        with pytest.raises(LeaseHeld) as refused:
            second.open()
    finally:
        first.lease.release()
    listed = [e["id"] for e in store.experiments()]
    assert first.exp in listed
    assert f"is leased by experiment {first.exp} (`fleet experiment show {first.exp}`)" in str(refused.value), \
        str(refused.value)


def test_a_wait_for_phones_shows_the_count_and_the_time_left(redis_url, tmp_path):
    """While an expectation waits, the progress line counts the phones there and counts the deadline down."""
    store = Store(redis_url)
    runner = _runner(tmp_path, store, [{"name": "baseline", "expect": "working_server", "server": 1, "within": 2}])
    shown: list[str] = []
    runner.progress = shown.append
    result = runner.run()
    assert shown and shown[0] == "baseline: 0/1 on server 1, 2 s left", shown
    assert shown[-1] in ("baseline: 0/1 on server 1, 0 s left", "baseline: 0/1 on server 1, 1 s left"), shown
    assert not result.steps[0].passed


def test_a_rollouts_lease_is_named_by_its_rollout_id(redis_url):
    from fleet.state.lease import SiteLease

    store = Store(redis_url)
    site = _site()
    with SiteLease(store, [site], owner="rollout:r-20261206-1", ttl=5):
        with pytest.raises(LeaseHeld) as refused:
            SiteLease(store, [site], owner="experiment:x", ttl=5, wait_for_predecessor=False).acquire()
    assert f"site {site} is leased by rollout r-20261206-1 (`fleet rollout status r-20261206-1`)" in str(refused.value)
