"""Rollouts end to end on a two-site virtual lab, with real Redis and real `fleet worker` processes."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, RunningLab, free_port, run_fleet, start_lab, wait_until
from fleet.state.store import RolloutStore, Store

pytestmark = pytest.mark.slow
SRV = {"expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3}


def two_site_spec(name: str, per_site: int) -> dict:
    site = lambda n: {"name": n, "phones": {"count": per_site, "models": ["SoundPoint IP 650", "VVX 410"]},  # noqa: E731
                      "servers": [{"address": "provider", **SRV}, {"address": "gateway", **SRV}],
                      "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"}}
    return {"name": name, "firmware_family": "uc-5.x",
            "timing": {"boot_time": 0.3, "boot_jitter": 2, "retry_interval": 3, "log_upload_period": 0, "dns_ttl": 1,
                       "test_speed": True},
            "sites": [site("east"), site("west")]}


@pytest.fixture(scope="module")
def fleet_lab(tmp_path_factory, worker_factory):
    lab = start_lab(tmp_path_factory.mktemp("rollout"), two_site_spec("rollout", 25))
    try:
        lab.workers = {s: worker_factory(lab.inventory, s) for s in ("east", "west")}
        yield lab
    finally:
        lab.down()


def playbook(tmp: Path, **overrides) -> Path:
    doc = {"kind": "rollout", "name": "expiry", "params": {"reg.1.server.1.expires": 12},
           "strategy": {"canary": 2, "wave_size": 10, "max_unavailable": 3, "failure_budget": {"total": 0},
                        "progress_deadline": 120},
           "verify": {"registered_to": [1, 2], "within": 25}, "rollback": True}
    for k, v in overrides.items():
        doc[k] = v
    path = tmp / f"pb-{time.time_ns()}.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def boot_dirs_digest(lab: RunningLab) -> str:
    h = hashlib.sha256()
    for d in sorted(lab.state.glob("boot-*")):
        for f in sorted(d.iterdir()):
            if not f.name.endswith("-app.log"):
                h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def unavailable_peaks(truth: dict, macs_by_site: dict[str, set[str]], since: float) -> dict[str, int]:
    """From the lab's own timeline: most phones of a site between reboot and re-registration at once."""
    peaks = {}
    for site, macs in macs_by_site.items():
        edges = [edge for _, a, b in down_spans(truth, macs, since) for edge in ((a, 1), (b, -1))]
        level = peak = 0
        for _, d in sorted(edges):
            level += d
            peak = max(peak, level)
        peaks[site] = peak
    return peaks


def down_spans(truth: dict, macs: set[str], since: float) -> list[tuple[str, float, float]]:
    """Every (phone, reboot, back) since `since` from the lab's timeline; back is the first working server after
    the reboot's boot (infinity: never)."""
    spans = []
    for mac in macs:
        events = truth["phones"][mac]["events"]
        for i, e in enumerate(events):
            if e["kind"] == "reboot" and e["t"] >= since:
                boot = next((j for j in range(i + 1, len(events)) if events[j]["kind"] == "boot"), len(events))
                back = next((x["t"] for x in events[boot:] if x["kind"] == "working_server" and x["data"]["server"]), None)
                spans.append((mac, e["t"], back or float("inf")))
    return spans


def explain_peak(truth: dict, macs: set[str], since: float, records: dict[str, dict]) -> str:
    """For an assertion message: the first moment a site had most phones down, and for each of them the lab's
    reboot and return next to the controller's record (dispatched, reboot recorded, settled, what verified it),
    times from `since`."""
    spans = down_spans(truth, macs, since)
    worst, at = 0, since
    for _, t, _ in sorted(spans, key=lambda s: s[1]):
        level = sum(1 for _, a, b in spans if a <= t < b)
        if level > worst:
            worst, at = level, t
    rel = lambda v: f"{float(v) - since:.3f}" if v not in (None, "") else "-"   # noqa: E731
    lines = [f"{worst} down at t0+{at - since:.3f}:"]
    for mac, a, b in sorted(spans, key=lambda s: s[1]):
        if a <= at < b:
            r = records.get(mac, {})
            lines.append(f"  {mac} lab reboot {rel(a)} back {rel(b) if b != float('inf') else 'never'}; controller "
                         f"dispatched {rel(r.get('dispatched_at'))} reboot_at {rel(r.get('reboot_at'))} settled "
                         f"{rel(r.get('settled_at'))} via {r.get('reboot_via', '-')} state {r.get('state')}; "
                         f"verify_from {rel(r.get('verify_from'))}; {r.get('verified_by', '')}")
    return "\n".join(lines)


def reboots(truth: dict, since: float) -> dict[str, int]:
    return {mac: sum(1 for e in p["events"] if e["kind"] == "reboot" and e["t"] >= since) for mac, p in truth["phones"].items()}


def macs_by_site(lab) -> dict[str, set[str]]:
    inv = yaml.safe_load(lab.inventory.read_text())
    return {s["name"]: {p["mac"] for p in s["phones"]} for s in inv["sites"]}


def test_dry_run_touches_nothing(fleet_lab, redis_url, tmp_path):
    before_files = boot_dirs_digest(fleet_lab)
    before_boots = {p["mac"]: p["boot_count"] for p in fleet_lab.status()["phones"]}
    res = run_fleet(["rollout", "run", str(playbook(tmp_path)), "--inventory", str(fleet_lab.inventory), "--dry-run", "--json"],
                    redis_url)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert len(plan["phones"]) == 50 and plan["waves"][0] == sorted(plan["waves"][0]) and len(plan["waves"][0]) == 2
    assert all(p["diff"]["reg.1.server.1.expires"] == ["10", "12"] for p in plan["phones"])
    assert plan["load"]["voip.provider.example"]["phones"] == 50
    assert plan["max_unavailable"] == {"east": 3, "west": 3}
    assert all(p["params"]["reg.1.auth.password"] == "***" for p in plan["phones"])
    assert "secret:" not in json.dumps(plan) and not any(
        s in res.stdout for s in yaml.safe_load((fleet_lab.state / "secrets.yml").read_text())["phone_admin"].values() if len(s) > 6)
    # not a wait for a condition: a second in which any task the dry run had queued would have acted, so that
    # nothing having changed means something
    time.sleep(1)
    assert boot_dirs_digest(fleet_lab) == before_files
    assert {p["mac"]: p["boot_count"] for p in fleet_lab.status()["phones"]} == before_boots


def test_invalid_parameter_is_rejected_before_any_phone_is_touched(fleet_lab, redis_url, tmp_path):
    before = boot_dirs_digest(fleet_lab)
    res = run_fleet(["rollout", "run", str(playbook(tmp_path, params={"reg.1.server.1.expires": 5})),
                     "--inventory", str(fleet_lab.inventory)], redis_url)
    assert res.returncode == 2 and "reg.1.server.1.expires=5: out of range" in res.stderr
    assert boot_dirs_digest(fleet_lab) == before


def test_fifty_phone_rollout_across_two_sites_respects_max_unavailable(fleet_lab, redis_url, tmp_path):
    t0 = time.time()
    res = run_fleet(["rollout", "run", str(playbook(tmp_path)), "--inventory", str(fleet_lab.inventory), "--json"],
                    redis_url, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-6000:]
    out = json.loads(res.stdout)
    assert out["status"] == "done" and out["counts"] == {"total": 50, "verified": 50}
    truth = fleet_lab.status()["ground_truth"]
    assert set(reboots(truth, t0).values()) == {1}, "every phone rebooted exactly once"
    peaks = unavailable_peaks(truth, macs_by_site(fleet_lab), t0)
    assert all(1 <= v <= 3 for v in peaks.values()), peaks
    # every device step is traced into the rollout's history: start and end, outcome, duration (fleet.base.steps)
    ends = [e for e in RolloutStore(Store(redis_url)).events(out["id"]) if e["kind"] == "step" and e["phase"] == "end"]
    by_step = {name: [e for e in ends if e["step"] == name] for name in ("call check", "publish", "reboot")}
    assert {name: len({e["mac"] for e in found}) for name, found in by_step.items()} == \
        {"call check": 50, "publish": 50, "reboot": 50}, by_step
    assert all(e["outcome"] == "ok" and e["duration_s"] >= 0 and e["attempt"] >= 0 for e in ends), ends[:3]
    # the phones now run the new configuration: read back over REST from a VVX
    from fleet.config import inventory
    from fleet.drivers.control.rest import RestPhone

    inv = inventory.load(fleet_lab.inventory)
    vvx = next(p for p in inv.sites[0].phones if p.family.rest)
    assert RestPhone(vvx, inventory.Secrets(inv).credentials(vvx.credentials)).config_get(
        ["reg.1.server.1.expires"]) == {"reg.1.server.1.expires": "12"}
    # content-addressed: the same rollout again changes nothing and reboots nobody
    t1 = time.time()
    res = run_fleet(["rollout", "run", str(playbook(tmp_path)), "--inventory", str(fleet_lab.inventory), "--json"], redis_url)
    assert json.loads(res.stdout)["counts"] == {"total": 50, "skipped": 50}
    assert set(reboots(fleet_lab.status()["ground_truth"], t1).values()) == {0}
    status = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)
    assert status["status"] == "done" and status["counts"] == {"verified": 50}


def test_failures_spend_the_budget_halt_and_roll_back_then_resume_finishes(fleet_lab, redis_url, tmp_path):
    inv = yaml.safe_load(fleet_lab.inventory.read_text())
    east = [p["mac"] for p in inv["sites"][0]["phones"]]
    bad = east[:3]
    boot = fleet_lab.state / "boot-east"
    originals = {m: {f.name: f.read_bytes() for f in boot.glob(f"{m}*.cfg")} for m in bad}
    for m in bad:
        fleet_lab.post("/fault", {"mac": m, "fault": "bad-boot-once"})
    pb = playbook(tmp_path, targets={"sites": ["east"]}, params={"reg.1.server.1.expires": 14},
                  strategy={"canary": 0, "wave_size": 5, "max_unavailable": 5, "failure_budget": {"total": 1},
                            "progress_deadline": 120},
                  verify={"registered_to": [1, 2], "within": 8})
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(fleet_lab.inventory), "--json"], redis_url, timeout=240)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["status"] == "halted" and "failure budget spent" in out["reason"]
    status = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)
    states = {m: st["state"] for m, st in status["phones"].items()}
    assert {states[m] for m in bad} == {"rolled_back"}
    assert sum(1 for s in states.values() if s == "pending") > 0, "halted before the rest of the site"
    for m in bad:
        assert {f.name: f.read_bytes() for f in boot.glob(f"{m}*.cfg")} == originals[m], "previous files restored"
    rolled = [e for e in RolloutStore(Store(redis_url)).events(out["id"])
              if e["kind"] == "step" and e["phase"] == "end" and e["mac"] in bad and e.get("files") == "backups"]
    assert {e["mac"] for e in rolled} == set(bad) and all(e["outcome"] == "ok" for e in rolled), rolled
    # the rolled-back phones run their old configuration again and are back on the provider
    phones = {p["mac"]: p for p in fleet_lab.status()["phones"]}
    assert all(phones[m]["registrations"][0]["working_server"] == 1 for m in bad)
    # resume with a bigger budget: verified phones are not touched again, the rest complete
    t1 = time.time()
    res = run_fleet(["rollout", "resume", out["id"], "--budget", "10", "--json"], redis_url, timeout=240)
    done = json.loads(res.stdout)
    assert done["status"] == "done", res.stderr[-2000:]
    assert done["counts"]["rolled_back"] == 3 and done["counts"]["verified"] == 22
    truth = fleet_lab.status()["ground_truth"]
    verified_before = [m for m, s in states.items() if s == "verified"]
    assert all(reboots(truth, t1)[m] == 0 for m in verified_before)


def test_abort_stops_after_in_flight_phones_settle_and_resume_finishes(fleet_lab, redis_url, tmp_path):
    rs = RolloutStore(Store(redis_url))
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 22}, targets={"sites": ["west"]},
                  strategy={"canary": 0, "wave_size": 25, "max_unavailable": 1, "failure_budget": {"total": 0},
                            "progress_deadline": 200})
    env = dict(os.environ, FLEET_REDIS_URL=redis_url)
    proc = subprocess.Popen([BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(fleet_lab.inventory), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def one_verified() -> str | None:
        """The rollout's id once one of its phones is verified."""
        latest = rs.list(limit=1)
        if latest and rs.get_field(latest[0]["id"], "playbook_path") == str(pb.resolve()):
            rid = latest[0]["id"]
            if any(st.get("state") == "verified" for st in rs.phones(rid, rs.macs(rid)).values()):
                return rid
        return None

    try:
        rid = wait_until(one_verified, 60, "a verified phone in the new rollout", state=lambda: (rs.list(limit=1), {
            m: st for r in rs.list(limit=1) for m, st in rs.phones(r["id"], rs.macs(r["id"])).items()
            if st.get("state") not in ("pending", "verified")}))
    except AssertionError:
        proc.kill()
        raise
    # the driver is held still while the command starts: beside a second suite, its start-up took longer than the
    # other 24 phones took to be verified, and nothing was left pending (its lease outlives the pause: 30 s)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        res = run_fleet(["rollout", "abort", rid], redis_url)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert res.returncode == 0 and "abort requested" in res.stdout, (res.stdout, res.stderr)
    out, err = proc.communicate(timeout=120)
    doc = json.loads(out)
    assert doc["status"] == "aborted" and proc.returncode == 1
    assert doc["counts"].get("pending", 0) > 0 and not any(k in doc["counts"] for k in ("dispatched", "verifying", "rebooting"))
    res = run_fleet(["rollout", "resume", rid, "--json"], redis_url, timeout=300)
    assert json.loads(res.stdout)["counts"] == {"total": 25, "verified": 25}


def test_failover_drill_gates_the_rollout_after_the_canaries(fleet_lab, redis_url, tmp_path):
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 24}, targets={"sites": ["east"]},
                  drill=str(ROOT / "playbooks/wan-outage-fallback.yml"),
                  strategy={"canary": 1, "wave_size": 24, "max_unavailable": 5, "failure_budget": {"total": 0},
                            "progress_deadline": 200})
    t0 = time.time()
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(fleet_lab.inventory), "--json"], redis_url, timeout=240)
    out = json.loads(res.stdout)
    assert out["status"] == "done", res.stderr[-3000:]
    experiments = json.loads(run_fleet(["experiment", "list", "--json"], redis_url).stdout)
    drill = next(e for e in experiments if float(e["started"]) > t0)
    assert drill["site"] == "east" and drill["status"] == "passed"
    events = json.loads(run_fleet(["experiment", "show", drill["id"], "--json"], redis_url).stdout)["events"]
    assert [e["kind"] for e in events].count("outage") == 1
    # the drill ran between the canary and the rest: the canary was verified before it, the others after
    states = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)["phones"]
    canary = {m: s for m, s in states.items() if int(s["wave"]) == 0}
    others = {m: s for m, s in states.items() if int(s["wave"]) > 0}
    assert len(canary) == 1 and len(others) == 24, states
    assert all(s["state"] == "verified" for s in states.values()), states
    started, finished = float(drill["started"]), float(drill["finished"])
    assert all(float(s["settled_at"]) <= started for s in canary.values()), (canary, drill)
    assert all(float(s["dispatched_at"]) >= finished for s in others.values()), (
        {m: s["dispatched_at"] for m, s in others.items()}, drill)


def test_limit_by_site_runs_only_that_sites_phones(fleet_lab, redis_url, tmp_path):
    """`--limit west` keeps, of a playbook aimed at phones of both sites, only west's (tests/test_rollout_stack_lab.py:
    MACs and models); last in this module, so the rollouts above find every phone as they expect."""
    sites = macs_by_site(fleet_lab)
    east, west = sorted(sites["east"]), sorted(sites["west"])
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": 16}, targets={"macs": [east[0], west[0], west[1]]},
                  strategy={"canary": 0, "wave_size": 5, "max_unavailable": 3, "failure_budget": {"total": 0},
                            "progress_deadline": 120})
    t0 = time.time()
    res = run_fleet(["rollout", "run", str(pb), "--inventory", str(fleet_lab.inventory), "--limit", "west", "--json"],
                    redis_url, timeout=240)
    out = json.loads(res.stdout or "{}")
    assert res.returncode == 0 and out["counts"] == {"total": 2, "verified": 2}, res.stderr[-3000:]
    count = reboots(fleet_lab.status()["ground_truth"], t0)
    assert {m for m, n in count.items() if n} == {west[0], west[1]} and count[west[0]] == count[west[1]] == 1
