"""The README's newcomer path, as a newcomer runs it: in an empty working directory, `fleet config init` with the Redis
URL and the lab's inventory, then `fleet collector`, `fleet worker` and `fleet experiment run` with no FLEET_*
variable in the environment and no --inventory anywhere; `fleet status` then shows the lab's phones.

Two labs: the userspace lab, and the namespace lab (a real Linux router, Kamailio; needs root and the
Debian packages of tests/test_netns_lab.py, skipped with the reason otherwise).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, lab_spec, start_lab, wait_until
from hil.harness import Proc, wait_worker

pytestmark = pytest.mark.slow



def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "the namespace lab needs root (ip netns, sshd, snmpd): run the tests as root"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work here (no network namespaces)"
    from hil.netns.daemons import missing_tools

    missing = missing_tools()
    return f"missing Debian packages: {' '.join(missing)}" if missing else None


def _newcomer_env(home: Path) -> dict:
    """A shell with no FLEET_* variable and a home of its own (no user fleet.toml)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "XDG_CONFIG_HOME"}
    return env | {"HOME": str(home), "COLUMNS": "200"}


class Newcomer:
    """Runs `fleet` as the README says, in its own working directory."""

    def __init__(self, tmp: Path) -> None:
        self.cwd, home = tmp / "my-site", tmp / "home"
        self.cwd.mkdir()
        home.mkdir()
        self.env = _newcomer_env(home)
        self.procs: list[Proc] = []

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([BIN / "fleet", *args], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, name: str, *args: str) -> Proc:
        log = self.cwd / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([BIN / "fleet", *args], cwd=self.cwd, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        p = Proc(proc, log)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _first_week(lab_inventory: Path, redis_url: str, tmp_path: Path, experiment_timeout: float) -> None:
    me = Newcomer(tmp_path)
    init = me.run("config", "init", "--redis-url", redis_url, "--inventory", str(lab_inventory))
    assert init.returncode == 0, init.stderr
    shown = json.loads(me.run("config", "show", "--json").stdout)
    assert shown["config_file"] == str(me.cwd / "fleet.toml"), shown
    assert shown["settings"]["redis_url"]["source"].startswith(f"{me.cwd / 'fleet.toml'}:"), shown
    try:
        collector = me.start("collector", "collector", "--site", "hq")
        wait_until(lambda: collector.proc.poll() is None and "collecting for" in collector.log.read_text(), 30,
                   "the collector collecting", state=lambda: (collector.proc.poll(), collector.log.read_text()[-2000:]))
        worker = me.start("worker", "worker", "--site", "hq", "--no-collect")
        wait_worker(worker, redis_url, ("hq",), timeout=30)
        res = me.run("experiment", "run", str(ROOT / "playbooks/wan-outage-fallback.yml"), "--report-dir", "reports",
                     timeout=experiment_timeout)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        assert "PASSED" in res.stdout and "warning" not in res.stderr, res.stdout[-2000:] + res.stderr
        assert list((me.cwd / "reports").glob("*/report.html")), list(me.cwd.rglob("*"))
        macs = [p["mac"] for p in yaml.safe_load(lab_inventory.read_text())["sites"][0]["phones"]]
        table = me.run("status", "--site", "hq")
        assert table.returncode == 0, table.stderr
        assert all(m in table.stdout for m in macs), table.stdout
        rows = {r["mac"]: r for r in json.loads(me.run("status", "--site", "hq", "--json").stdout)}
        assert all(rows[m]["working_server"] == 1 for m in macs), [rows.get(m) for m in macs]
    finally:
        me.stop()


def test_a_newcomer_runs_an_experiment_on_the_userspace_lab_with_only_fleet_config_init(redis_url, tmp_path):
    lab = start_lab(tmp_path / "lab", lab_spec("newcomer", phones=4, poll_interval=2.0))
    try:
        _first_week(lab.inventory, redis_url, tmp_path, experiment_timeout=240)
    finally:
        lab.down()


@pytest.mark.lab
@pytest.mark.timeout(600)
def test_a_newcomer_runs_an_experiment_on_the_namespace_lab_with_only_fleet_config_init(redis_url, tmp_path):
    why = _why_no_netns()
    if why:
        pytest.skip(why)
    spec = lab_spec("newcomer-ns", phones=4, poll_interval=2.0) | {"backend": "netns"}
    (tmp_path / "lab").mkdir()
    labfile, state, inv = tmp_path / "lab" / "lab.yml", tmp_path / "lab" / "state", tmp_path / "lab" / "inventory.yml"
    labfile.write_text(yaml.safe_dump(spec))
    up = subprocess.run([BIN / "hil", "up", str(labfile), "--state-dir", str(state), "--inventory-out", str(inv),
                         "--ready-timeout", "40"], capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        _first_week(inv, redis_url, tmp_path, experiment_timeout=400)
    finally:
        subprocess.run([BIN / "hil", "down", "--state-dir", str(state)], capture_output=True, timeout=60)


def test_the_readme_path_is_the_one_tested_here():
    """"Using it on your own site" starts with `fleet config init` and its commands need no variable and no
    --inventory: the commands the tests above run."""
    section = (ROOT / "README.md").read_text().split("## Using it on your own site", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]
    assert commands[0].startswith("fleet config init --redis-url ") and "--inventory " in commands[0], commands
    rest = commands[1:]
    assert "fleet collector --site hq" in rest and any(c.startswith("fleet worker --site hq --no-collect") for c in rest)
    assert any(c.startswith("fleet experiment run playbooks/wan-outage-fallback.yml") for c in rest)
    assert any(c.startswith("fleet status --site hq") for c in rest)
    assert not any("--inventory" in c or "FLEET_" in c for c in rest), rest
