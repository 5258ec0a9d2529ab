"""What an operator reads during and after a rollout, on a virtual lab with real Redis, workers and `fleet` processes.

Each test failed on the code before issue 19:
- a phone whose admin password is not the one the secrets file holds was deferred as "possibly in a call" until the
  wave's progress deadline; now its first call check fails it, with the reason in `rollout status`'s table and in
  the run's own lines;
- `rollout run` printed a bar per site and `{'total': 6, ...}`; now a line per phone as it settles, and words;
- `rollout abort` on a halted rollout printed "abort requested" and changed nothing, the backups left on the boot
  server; now it aborts and removes them;
- Ctrl-C (and SIGTERM) ended `rollout run` with exit 1; the README's table says 130.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, run_fleet, start_lab, start_worker, wait_until
from fleet.state.store import RolloutStore, Store
from test_rollout import playbook, two_site_spec

pytestmark = pytest.mark.slow
WIDE = {"COLUMNS": "400"}     # a table row on one line, so a reason is found whole in the text


@pytest.fixture(scope="module")
def lab(tmp_path_factory, redis_url):
    """One site of 8 phones; one VVX (REST, which takes the admin login) whose admin password the secrets file
    has wrong: it points at a second secret, `phone_admin_stale`, as an inventory copied from an older site would."""
    spec = two_site_spec("messages", 8)
    spec["sites"] = spec["sites"][:1]
    lab = start_lab(tmp_path_factory.mktemp("messages"), spec)
    try:
        doc = yaml.safe_load(lab.inventory.read_text())
        phones = sorted(doc["sites"][0]["phones"], key=lambda p: p["mac"])
        stale = [p for p in phones if p["model"].startswith("VVX")][-1]
        stale["credentials"] = "phone_admin_stale"
        lab.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
        secrets_path = lab.state / "secrets.yml"
        secrets = yaml.safe_load(secrets_path.read_text())
        secrets["phone_admin_stale"] = {"username": "Polycom", "password": "not-the-phones-password"}
        secrets_path.write_text(yaml.safe_dump(secrets))
        lab.stale = stale["mac"]
        lab.boot = next(lab.state.glob("boot-*"))
        lab.worker = start_worker(redis_url, lab.inventory, "east", tmp_path_factory.mktemp("w") / "worker.log")
        yield lab
    finally:
        if getattr(lab, "worker", None) is not None:
            lab.worker.stop()
        lab.down()


def _run(pb: Path, lab, redis_url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(lab.inventory), *extra],
                            env=dict(os.environ, FLEET_REDIS_URL=redis_url, **WIDE), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _newest(rs: RolloutStore, pb: Path) -> str | None:
    latest = rs.list(limit=1)
    if latest and rs.get_field(latest[0]["id"], "playbook_path") == str(pb.resolve()):
        return latest[0]["id"]
    return None


def _status_table(rid: str, redis_url: str) -> str:
    res = subprocess.run([BIN / "fleet", "rollout", "status", rid], env=dict(os.environ, FLEET_REDIS_URL=redis_url, **WIDE),
                         capture_output=True, text=True, timeout=30)
    return res.stdout + res.stderr


def _row(table: str, mac: str) -> str:
    return next((line for line in table.splitlines() if mac in line), "")


def test_wrong_admin_password_fails_at_its_first_call_check_with_the_reason_then_abort_cleans_up(lab, redis_url,
                                                                                                   tmp_path):
    rs = RolloutStore(Store(redis_url))
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 14},
                  strategy={"canary": 2, "wave_size": 6, "max_unavailable": 2, "failure_budget": {"total": 0},
                            "progress_deadline": 240})
    proc = _run(pb, lab, redis_url)
    try:
        rid = wait_until(lambda: _newest(rs, pb), 30, "the rollout created")
        # the reason is in the table while the run goes on: not deferred until the 240 s progress deadline
        row = wait_until(lambda: (lambda r: r if "wrong credentials" in r else None)(_row(_status_table(rid, redis_url),
                                                                                          lab.stale)),
                         90, f"the stale-password phone's reason in `rollout status {rid}`",
                         state=lambda: _status_table(rid, redis_url)[-3000:])
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "failed" in row and "401 after answering the challenge" in row, row
    assert "not-the-phones-password" not in out + err + row
    # its first call check was its last: never deferred, one call check and nothing pushed or rebooted
    events = [e for e in rs.events(rid) if e.get("mac") == lab.stale]
    assert not [e for e in events if e["kind"] == "deferred"], events
    assert [e["step"] for e in events if e["kind"] == "step" and e["phase"] == "end"] == ["call check"], events
    # the run: halted (budget 0), a line per phone in Ansible's style, words, no Python repr
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert re.search(rf"failed: \[{lab.stale}\] east wave 1: call check refused: wrong credentials", out), out
    assert re.search(r"ok: \[[0-9a-f]{12}\] east wave 0 verified on servers 1 and 2 in \d+\.\d s", out), out
    assert "step reboot" not in out, out        # steps only with -v
    assert re.search(r"halted: failure budget spent: 1 phone failed \(budget 0\); 8 phones: \d+ verified, 1 failed", out), out
    assert "{'" not in out + err and not re.search(r"\b1 (phones|sites|waves)\b", out + err), out + err
    # halted: the backups of the phones it pushed are still on the boot server, and abort removes them
    assert rs.get_field(rid, "status") == "halted"
    backups = sorted(p.name for p in lab.boot.iterdir() if p.name.endswith(f".before-{rid}"))
    assert backups, sorted(p.name for p in lab.boot.iterdir())
    res = run_fleet(["rollout", "abort", rid], redis_url, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{rid} aborted; removed {len(backups)} backup file{'' if len(backups) == 1 else 's'}" in res.stdout, (
        res.stdout, backups)
    assert not [p.name for p in lab.boot.iterdir() if p.name.endswith(f".before-{rid}")]
    assert json.loads(run_fleet(["rollout", "status", rid, "--json"], redis_url).stdout)["status"] == "aborted"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_rollout_exits_130_and_stays_resumable(lab, redis_url, tmp_path, sig):
    rs = RolloutStore(Store(redis_url))
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 16 if sig == signal.SIGINT else 18},
                  strategy={"canary": 0, "wave_size": 8, "max_unavailable": 1, "failure_budget": {"total": 8},
                            "progress_deadline": 240})
    proc = _run(pb, lab, redis_url)

    def one_settled() -> str | None:
        rid = _newest(rs, pb)
        states = rs.phones(rid, rs.macs(rid)) if rid else {}
        return rid if any(st.get("state") in ("verified", "failed") for st in states.values()) else None

    try:
        rid = wait_until(one_settled, 120, "a settled phone in the new rollout",
                         state=lambda: proc.poll() or rs.list(limit=1))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, out[-3000:], err[-3000:])
    said = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert f"halted: interrupted ({said}); `fleet rollout resume` continues; 8 phones:" in out, out[-3000:]
    assert rs.get_field(rid, "status") == "halted" and said in rs.get_field(rid, "reason")
    # the lease went with the run: the rollout can be resumed at once (and is, so the lab is left as found)
    res = run_fleet(["rollout", "resume", rid, "--json"], redis_url, timeout=240)
    doc = json.loads(res.stdout)
    # the stale-password phone fails again (its one failure fits the budget): exit 1, every other phone verified
    assert doc["status"] == "done" and doc["counts"] == {"total": 8, "verified": 7, "failed": 1}, doc
    assert res.returncode == 1


def test_verbose_run_prints_every_step_of_every_phone(lab, redis_url, tmp_path):
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 20},
                  strategy={"canary": 0, "wave_size": 8, "max_unavailable": 4, "failure_budget": {"total": 8},
                            "progress_deadline": 240})
    proc = _run(pb, lab, redis_url, "-v")
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:] + err[-3000:]     # the stale-password phone fails; the others verify
    verified = re.findall(r"^ok: \[([0-9a-f]{12})\] east wave 0 verified on servers 1 and 2 in \d+\.\d s$", out, re.M)
    assert len(verified) == 7 and lab.stale not in verified, out
    # each phone's device steps, from the workers' journal (every one is there); the state lines between them are
    # what the driver's polls happened to see (a phone may pass through "publishing" between two), so not required
    for mac in verified:
        for said in ("step call check: ok in", "step publish: ok in", "step reboot: ok in"):
            assert f"[{mac}] east wave 0 {said}" in out, (mac, said, out)
        steps = [out.index(f"[{mac}] east wave 0 {said}") for said in ("step call check", "step publish", "step reboot")]
        assert steps == sorted(steps), (mac, out)      # in the order they happened
    assert re.search(rf"^  \[{lab.stale}\] east wave 0 step call check: ok in", out, re.M), out
    assert f"done; 8 phones: 7 verified, 1 failed" in out, out
