"""Workers announce the hashes of their inventory and secrets file; a CLI run on other files is warned, and a
rollout refused (exit 2) unless --force. Real Redis (the session's), a real `fleet worker` process."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, start_worker, wait_until

SITE = "filescheck"          # a site no other test's lab uses: the rollout below leases it
INVENTORY = f"""name: files
secrets_file: secrets.yml
provider: {{name: voip.example}}
sites:
  - name: {SITE}
    gateway: 127.10.0.1
    boot_server: {{url: "http://127.0.0.1:9/", credentials: boot}}
    router: {{driver: linux_ssh, address: 127.0.0.1, port: 9, credentials: r, wan_interface: wan0}}
    params: {{reg.1.server.1.address: voip.example}}
    phones:
      - {{mac: "0004f2f11e01", model: VVX 410, address: 127.0.0.1, http_port: 9, credentials: admin}}
"""


def _files(directory: Path, secret: str = "pw", site: str = SITE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "inv.yml").write_text(INVENTORY.replace(f"name: {SITE}", f"name: {site}"))
    secrets = directory / "secrets.yml"
    secrets.write_text("".join(f"{n}: {{username: u, password: {secret}}}\n" for n in ("boot", "r", "admin")))
    secrets.chmod(0o600)
    return directory / "inv.yml"


def _fleet(args: list[str], redis_url: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | {"FLEET_REDIS_URL": redis_url,
                                                                               "COLUMNS": "300"}
    return subprocess.run([BIN / "fleet", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def worker(redis_url, tmp_path_factory):
    """A worker for SITE on the files in worker/, and the store it announced itself in."""
    from fleet.state.store import Store

    base = tmp_path_factory.mktemp("worker-files")
    inv = _files(base / "worker")
    w = start_worker(redis_url, inv, SITE, base / "worker.log", collect=False)
    try:
        yield w, inv, Store(redis_url)
    finally:
        w.stop()


def _pb(directory: Path) -> Path:
    pb = directory / "pb.yml"
    pb.write_text(yaml.safe_dump({"kind": "rollout", "name": "files-check", "params": {"reg.1.server.1.expires": 120},
                                  "strategy": {"canary": 0, "wave_size": 1, "failure_budget": {"total": 0},
                                               "progress_deadline": 20},
                                  "verify": {"registered_to": [1], "within": 5}, "rollback": False}))
    return pb


def test_the_worker_announces_paths_and_hashes_never_content(worker):
    w, inv, store = worker
    from fleet.worker.files_beacon import TTL_S

    found = store.worker_files(SITE, TTL_S)
    assert len(found) == 1, found
    info = next(iter(found.values()))
    assert info["pid"] == w.pid and info["node"].startswith(f"{SITE}@"), info
    assert info["inventory_path"] == str(inv.resolve()) and info["secrets_path"] == str(inv.parent.resolve() / "secrets.yml")
    assert len(info["inventory_sha256"]) == 64 and len(info["secrets_sha256"]) == 64
    assert "password" not in json.dumps(info)


def test_a_rollout_on_another_secrets_file_is_refused_naming_file_and_worker(worker, redis_url, tmp_path):
    w, _, store = worker
    inv = _files(tmp_path / "cli", secret="another-pw")
    before = [r["id"] for r in json.loads(_fleet(["rollout", "list", "--json"], redis_url, tmp_path).stdout)]
    res = _fleet(["rollout", "run", str(_pb(tmp_path)), "--inventory", str(inv)], redis_url, tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert f"site {SITE}: worker {SITE}@" in res.stderr and f"pid {w.pid}" in res.stderr, res.stderr
    assert f"runs with a different secrets file: {tmp_path / 'worker'}" not in res.stderr   # it is the worker's own path
    assert "different secrets file" in res.stderr and "different inventory" not in res.stderr, res.stderr
    assert "pass --force" in res.stderr and "another-pw" not in res.stderr, res.stderr
    after = [r["id"] for r in json.loads(_fleet(["rollout", "list", "--json"], redis_url, tmp_path).stdout)]
    assert after == before, "a refused rollout must not be recorded"


def test_an_experiment_on_another_inventory_is_warned(worker, redis_url, tmp_path):
    inv = _files(tmp_path / "cli")
    inv.write_text(INVENTORY.replace("name: files\n", "name: files-changed\n", 1))
    pb = tmp_path / "exp.yml"
    pb.write_text(yaml.safe_dump({"kind": "experiment", "name": "files-check", "site": SITE,
                                  "steps": [{"name": "settle", "wait": 0.5}]}))
    res = _fleet(["experiment", "run", str(pb), "--inventory", str(inv), "--report-dir", str(tmp_path / "reports"),
                  "--task-timeout", "5"], redis_url, tmp_path)
    assert f"warning: site {SITE}: worker {SITE}@" in res.stderr + res.stdout, (res.stdout, res.stderr)
    assert f"runs with a different inventory: {worker[1].resolve()}, this command with {inv.resolve()}" \
        in " ".join((res.stderr + res.stdout).split()), res.stderr
    assert "Traceback" not in res.stderr


def test_the_same_files_elsewhere_pass_and_force_overrides(worker, redis_url, tmp_path):
    same = _files(tmp_path / "copy")           # other paths, same content: the same files
    res = _fleet(["rollout", "run", str(_pb(tmp_path)), "--inventory", str(same)], redis_url, tmp_path)
    assert "warning" not in res.stderr and "refusing" not in res.stderr, res.stderr
    assert res.returncode in (0, 1), (res.stdout, res.stderr)    # it ran (the phone is not there: it may fail)
    other = _files(tmp_path / "other", secret="another-pw")
    forced = _fleet(["rollout", "run", str(_pb(tmp_path)), "--inventory", str(other), "--force"], redis_url, tmp_path)
    assert "different secrets file" in forced.stderr and "refusing" not in forced.stderr, forced.stderr
    assert forced.returncode in (0, 1) and re.search(r"^rollout \S+-files-check-", forced.stdout, re.M), forced.stdout


def test_an_announcement_lapses_without_refresh_and_goes_at_a_clean_stop(redis_url, tmp_path):
    from fleet.config import inventory
    from fleet.state.store import Store
    from fleet.worker.files_beacon import FilesBeacon

    store = Store(redis_url)
    inv = inventory.load(_files(tmp_path, site="lapsecheck"))
    beacon = FilesBeacon(store, inv, ["lapsecheck"], "lapsecheck@test", ttl=1.0)
    beacon.announce()                 # once, never refreshed (as a killed worker's)
    assert list(store.worker_files("lapsecheck", 1.0))
    wait_until(lambda: not store.worker_files("lapsecheck", 1.0), 5, "the announcement lapsing")
    worker = start_worker(redis_url, _files(tmp_path / "w", site="lapsecheck"), "lapsecheck", tmp_path / "w.log", collect=False)
    try:
        assert [i["pid"] for i in store.worker_files("lapsecheck", 30).values()] == [worker.pid]
    finally:
        worker.stop()
    assert worker.proc.returncode is not None
    wait_until(lambda: not store.worker_files("lapsecheck", 30), 5, "the stopped worker's announcement removed",
               state=lambda: store.worker_files("lapsecheck", 30))
