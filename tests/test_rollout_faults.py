"""Rollouts survive workers SIGKILLed at random points and a Redis restart (AOF).

Each run is a 100-phone rollout across two sites. The outcome is judged on
the lab's own ground truth: every phone verified, each rebooted exactly once,
and no site ever had more than `max_unavailable` phones down at once. The
kill points come from a seeded generator; set FLEET_FAULT_SEED to replay a
failing run (the seed is in every assertion message). The collectors run
as their own service (`fleet collector`), as in docker-compose.yml, so a
killed worker costs tasks, not observations.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import BIN, start_collector, start_lab, start_worker, wait_until
from soundpoint.redisboot import start_private
from fleet.state.store import RolloutStore, Store
from test_rollout import explain_peak, macs_by_site, playbook, reboots, two_site_spec, unavailable_peaks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory):
    directory = tmp_path_factory.mktemp("aof")
    url, proc = start_private(directory, appendonly=True)
    state = {"url": url, "proc": proc, "dir": directory, "port": int(url.rsplit(":", 1)[1].split("/")[0])}
    yield state
    state["proc"].terminate()


PER_SITE = 50
MAX_UNAVAILABLE = 5
SEED = int(os.environ.get("FLEET_FAULT_SEED", time.time_ns() % 1_000_000))
# pytest's own timeout is 300 s (pyproject.toml); every wait below ends before it, so a stuck rollout fails with
# its state in the message instead of a bare timeout. A wave's progress deadline is shorter still: a wave that
# stops moving halts the rollout (with its reason) well inside the budget.
TEST_BUDGET_S = 270
PROGRESS_DEADLINE_S = 90


@pytest.fixture
def budget():
    """Seconds left for this test's waits: each one is bounded by it."""
    end = time.monotonic() + TEST_BUDGET_S
    return lambda: max(1.0, end - time.monotonic())


# Four of the east site's SoundPoint IP 650s (UC Software 4.0) reboot through the web UI: WEB because the inventory
# says `reboot: web`; REFUSED because the site challenges check-sync NOTIFYs (voIpProt.SIP.requestValidation) and
# the inventory lacks their SIP password to answer with (the phones take it from the site's own <MAC>-reg.cfg),
# so fleet falls back to the web UI. REFUSED phones do not always reboot on check-sync (alwaysReboot=0, the
# phone's default): a lost task's successor must not take their reboot for an idempotent check-sync.
WEB, REFUSED = "SoundPoint IP 650, reboot: web", "SoundPoint IP 650, check-sync refused"
NOTIFY_DIGEST = {"voIpProt.SIP.requestValidation.1.request": "NOTIFY", "voIpProt.SIP.requestValidation.1.method": "digest"}


def _web_rebooted_phones(lab) -> dict[str, list[str]]:
    """Set up the WEB and REFUSED phones in the inventory (before any worker reads it); their MACs by kind."""
    doc = yaml.safe_load(lab.inventory.read_text())
    east = next(s for s in doc["sites"] if s["name"] == "east")
    ip650 = [p for p in east["phones"] if p["model"] == "SoundPoint IP 650"]
    kinds = {WEB: ip650[-8:-4], REFUSED: ip650[-4:]}
    for phone in kinds[WEB]:
        phone["reboot"] = "web"
    for phone in kinds[REFUSED]:
        del phone["params"]["reg.1.auth.password"]
        phone["params"]["voIpProt.SIP.specialEvent.checkSync.alwaysReboot"] = "0"
    lab.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    return {kind: [p["mac"] for p in chosen] for kind, chosen in kinds.items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, aof_redis):
    os.environ["FLEET_VISIBILITY_TIMEOUT"] = "15"   # inherited by the workers started below
    spec = two_site_spec("faults", PER_SITE)
    spec["sites"][0]["params"] = dict(NOTIFY_DIGEST)   # east's phones challenge every check-sync
    lab = start_lab(tmp_path_factory.mktemp("faults"), spec)
    lab.kinds = _web_rebooted_phones(lab)
    lab.workers = {}
    logs = tmp_path_factory.mktemp("logs")
    collector = start_collector(aof_redis["url"], lab.inventory, ("east", "west"), logs / "collector.log")
    try:
        for site in ("east", "west"):
            lab.workers[site] = start_worker(aof_redis["url"], lab.inventory, site, logs / f"{site}.log", collect=False)
        yield lab
    finally:
        collector.stop()
        for w in lab.workers.values():
            w.stop()
        lab.down()
        os.environ.pop("FLEET_VISIBILITY_TIMEOUT", None)


def _start(pb, lab, url):
    env = dict(os.environ, FLEET_REDIS_URL=url, FLEET_DISPATCH_STALL="8")
    return subprocess.Popen([BIN / "fleet", "rollout", "run", str(pb), "--inventory", str(lab.inventory), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _status(url: str, rid: str) -> str:
    """`fleet rollout status --json`, cut to what explains a stuck run: status, reason, counts, unsettled phones."""
    try:
        res = subprocess.run([BIN / "fleet", "rollout", "status", rid, "--json"], env=dict(os.environ, FLEET_REDIS_URL=url),
                             capture_output=True, text=True, timeout=20)
        doc = json.loads(res.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return f"(no status: {exc!r})"
    doc["phones"] = {m: p for m, p in doc["phones"].items() if p.get("state") not in ("verified", "pending")}
    return json.dumps(doc)


def _finish(proc: subprocess.Popen, url: str, rid: str, budget, what: str) -> tuple[str, str]:
    """The controller's output, or a failure naming the rollout's state if it does not end within the budget."""
    try:
        return proc.communicate(timeout=budget())
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{what} did not end within the test's budget; rollout status: {_status(url, rid)}; "
                    f"its stderr: {err[-2000:]}")


def _rollout_id(rs: RolloutStore) -> str:
    return rs.list(limit=1)[0]["id"]


def _states(rs: RolloutStore, rid: str) -> dict[str, str]:
    return {mac: st.get("state", "?") for mac, st in rs.phones(rid, rs.macs(rid)).items()}


def _trouble(rs: RolloutStore, rid: str) -> dict:
    """The records of the phones that were started and did not end verified, for assertion messages."""
    out = {}
    for mac, full in rs.phones(rid, rs.macs(rid), full=True).items():
        rec = {a: b for a, b in full.items() if not a.startswith(("plan", "backed"))}
        if rec.get("state") not in ("verified", "pending"):
            out[mac] = rec
    return out


def _check_outcome(lab, rs, rid, t0, expires, context: str, targeted: set[str] | None = None):
    """Every targeted phone (default: all) verified, rebooted exactly once and configured; every other phone
    not rebooted at all; never more than MAX_UNAVAILABLE of a site down at once."""
    by_site = macs_by_site(lab)
    targeted = targeted if targeted is not None else set().union(*by_site.values())
    states = _states(rs, rid)
    assert set(states) == targeted and set(states.values()) == {"verified"}, \
        (context, {m: s for m, s in states.items() if s != "verified"})
    truth = lab.status()["ground_truth"]
    counts = reboots(truth, t0)
    odd = {m: c for m, c in counts.items() if c != (1 if m in targeted else 0)}
    assert not odd, (context, odd, {m: rs.phone(rid, m) for m in odd})
    peaks = unavailable_peaks(truth, by_site, t0)
    if any(v > MAX_UNAVAILABLE for v in peaks.values()):
        records = rs.phones(rid, rs.macs(rid), full=True)
        pytest.fail(f"{context}: peaks {peaks} above max_unavailable {MAX_UNAVAILABLE}\n" + "\n".join(
            f"{site}: {explain_peak(truth, by_site[site], t0, records)}" for site, v in peaks.items() if v > MAX_UNAVAILABLE))
    for site, macs in by_site.items():
        for mac in macs & targeted:
            cfg = (lab.state / f"boot-{site}" / f"{mac}-fleet.cfg").read_text()
            assert f'reg.1.server.1.expires="{expires}"' in cfg, (context, mac)


def _start_rollout(lab, url: str, tmp_path, expires: int, targets: dict | None = None):
    rs = RolloutStore(Store(url))
    pb = playbook(tmp_path, params={"reg.1.server.1.expires": expires},
                  strategy={"canary": 1, "wave_size": 20, "max_unavailable": MAX_UNAVAILABLE, "failure_budget": {"total": 0},
                            "progress_deadline": PROGRESS_DEADLINE_S}, **({"targets": targets} if targets else {}))
    before = rs.count()
    t0 = time.time()
    proc = _start(pb, lab, url)

    def recorded() -> bool:
        exited = proc.poll() is not None
        if rs.count() > before:
            return True
        assert not exited, proc.stderr.read()
        return False

    # beside a second suite the command's start-up (imports, inventory, plan) took over 30 s; a command left running
    # after this wait failed went on rebooting phones in the next run's count (twice each)
    try:
        wait_until(recorded, 120, "the new rollout recorded", step=0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return rs, proc, _rollout_id(rs), t0


def _wait_for_verified(rs, url: str, rid: str, count: int, proc, budget) -> None:

    def verified() -> bool:
        exited = proc.poll() is not None   # looked at first: a rollout that ends in between is judged by its count
        if sum(1 for s in _states(rs, rid).values() if s == "verified") >= count:
            return True
        if exited:
            pytest.fail(f"the rollout exited before {count} phones were verified: {_status(url, rid)}")
        return False

    wait_until(verified, min(120, budget()), f"{count} phones verified", step=0.02, state=lambda: _status(url, rid))


@pytest.mark.parametrize("run", range(3))
def test_workers_killed_at_random_points(lab, aof_redis, tmp_path, run, budget):
    """1-2 SIGKILLs per run, each of a random site's worker once a random number of phones is verified, plus a
    random delay that lands it anywhere in the tasks then in flight (publishing, claiming or sending a reboot)."""
    rng = random.Random(SEED * 10 + run)
    kills = sorted(rng.sample(range(2, 2 * PER_SITE - 10), rng.choice((1, 2))))
    plan = [(at, rng.choice(("east", "west")), rng.uniform(0, 0.25)) for at in kills]
    context = f"FLEET_FAULT_SEED={SEED} run {run}: kills {plan}"
    expires = 14 + run
    rs, proc, rid, t0 = _start_rollout(lab, aof_redis["url"], tmp_path, expires)
    for at, site, delay in plan:
        _wait_for_verified(rs, aof_redis["url"], rid, at, proc, budget)
        time.sleep(delay)   # the experiment: a random point inside the tasks in flight, not a wait for a condition
        worker = lab.workers[site]
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        lab.workers[site] = start_worker(aof_redis["url"], lab.inventory, site, tmp_path / f"{site}-{at}.log", collect=False)
    out, err = _finish(proc, aof_redis["url"], rid, budget, f"the rollout ({context})")
    assert proc.returncode == 0, (context, err[-3000:], _trouble(rs, rid))
    assert json.loads(out)["status"] == "done", (context, out)
    _check_outcome(lab, rs, rid, t0, expires, context)


AROUND_THE_REBOOT_PHONES = 8    # the canary, then a wave the victim (the 4th) is in with phones on either side


def _east_phones(lab, kind: str) -> tuple[list[str], dict]:
    """The first east phones of a kind (a model, WEB or REFUSED) and the playbook targets that select them."""
    if kind in lab.kinds:
        macs = lab.kinds[kind][:AROUND_THE_REBOOT_PHONES]
    else:
        inv = yaml.safe_load(lab.inventory.read_text())
        east = next(s for s in inv["sites"] if s["name"] == "east")
        macs = [p["mac"] for p in east["phones"] if p["model"] == kind][:AROUND_THE_REBOOT_PHONES]
    return macs, {"macs": macs}


DIES_AROUND_THE_REBOOT = [
    ("rollout.reboot_recorded", "VVX 410", "rest safeRestart"),
    ("rollout.reboot_recorded", "SoundPoint IP 650", "sip check-sync"),
    ("rollout.reboot_recorded", REFUSED, "web /form-submit/Reboot (check-sync refused: "),
    ("rollout.reboot_sent", "VVX 410", None),
    ("rollout.reboot_sent", "SoundPoint IP 650", None),
    ("rollout.reboot_sent", WEB, None),
    ("rollout.reboot_sent", REFUSED, None)]
_KIND_IDS = {"VVX 410": "rest", "SoundPoint IP 650": "check-sync", WEB: "web", REFUSED: "check-sync-refused"}


@pytest.mark.parametrize("point,kind,expected", DIES_AROUND_THE_REBOOT,
                         ids=[f"{point.split('.')[1]}-{_KIND_IDS[kind]}" for point, kind, _ in DIES_AROUND_THE_REBOOT])
def test_worker_dies_around_the_reboot(lab, aof_redis, tmp_path, monkeypatch, point, kind, expected, budget):
    """The milliseconds between claiming (and recording, in the same step) a phone's reboot and recording that it
    went out, which random kills rarely hit: a failpoint kills the east worker there, on a REST phone (the proof is its uptime), on a
    check-sync one and on web UI rebooted ones, chosen or the fallback after a refused check-sync (the proof is
    the unregistration event it sent as it shut down: a second check-sync would be refused again and the
    fallback would reboot the phone twice). A reboot that never left must be sent, once; one that did must not
    be sent again. The rollout covers only the first east phones of that kind (8 of a model, 4 WEB or REFUSED):
    the failpoint needs no more, and these runs over all 100 phones would cost the suite minutes."""
    phones, targets = _east_phones(lab, kind)
    victim = phones[3]   # past the canary and the first few, so the rollout is under way when it dies
    lab.workers["east"].stop()
    monkeypatch.setenv("FLEET_FAILPOINTS", f"{point}:{victim}=kill@1")
    # REFUSED phones: a check-sync lost in flight with no fallback recorded after it may have been taken, so its
    # successor fails the phone rather than risk a second reboot by the web UI (fleet.rollout.work
    # _resend_may_fall_back). The kill would take a second in-flight REFUSED phone that way, by chance, so their
    # worker runs one task at a time: only the victim is in flight when it dies
    one_at_a_time = ("--concurrency", "1") if kind == REFUSED else ()
    lab.workers["east"] = start_worker(aof_redis["url"], lab.inventory, "east", tmp_path / "east-failpoint.log", collect=False,
                                       extra=one_at_a_time)
    monkeypatch.delenv("FLEET_FAILPOINTS")
    expires = 30 + len(point) + len(kind)
    rs, proc, rid, t0 = _start_rollout(lab, aof_redis["url"], tmp_path, expires, targets=targets)
    try:
        lab.workers["east"].proc.wait(min(120, budget()))   # the failpoint fired
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the failpoint {point} on {victim} never fired: {_status(aof_redis['url'], rid)}")
    lab.workers["east"] = start_worker(aof_redis["url"], lab.inventory, "east", tmp_path / "east-after.log", collect=False)
    out, err = _finish(proc, aof_redis["url"], rid, budget, f"the rollout ({point} on {victim})")
    assert proc.returncode == 0 and json.loads(out)["status"] == "done", (point, victim, err[-3000:], _trouble(rs, rid))
    _check_outcome(lab, rs, rid, t0, expires, point, set(phones))   # every targeted phone rebooted exactly once
    # the kill takes the worker's other in-flight task with it, so other phones may take the same path; the
    # victim's record says which way its own reboot went (every phone rebooted once is checked above)
    via = rs.phone(rid, victim).get("reboot_via", "")
    if expected:
        assert via.startswith(expected) and via.endswith(", resent after a lost task"), (point, victim, via)
    else:
        assert "resent" not in via, (point, victim, via)


@pytest.mark.parametrize("down_s", [1, 8])
def test_redis_restarted_mid_rollout(lab, aof_redis, tmp_path, budget, down_s):
    """Redis stops and comes back from its AOF, briefly (the clients' retries ride it out) and for longer than the
    clients retry (tasks and the controller fail with it); the rollout finishes, resumed if its controller died."""
    url = aof_redis["url"]
    expires = 20 + down_s
    rs, proc, rid, t0 = _start_rollout(lab, url, tmp_path, expires)
    _wait_for_verified(rs, url, rid, 30, proc, budget)
    aof_redis["proc"].terminate()   # SIGTERM: a clean shutdown, AOF fsynced (the fleet ACL user may not SHUTDOWN)
    aof_redis["proc"].wait(10)
    time.sleep(down_s)   # the experiment: how long Redis stays down
    _, aof_redis["proc"] = start_private(aof_redis["dir"], port=aof_redis["port"], appendonly=True,
                                         password=urlsplit(url).password)
    out, err = _finish(proc, url, rid, budget, "the rollout across the Redis restart")
    if proc.returncode != 0 or json.loads(out or "{}").get("status") != "done":
        # the controller may have died with its connection; the rollout's state survived in Redis: resume it
        env = dict(os.environ, FLEET_REDIS_URL=url, FLEET_DISPATCH_STALL="8")
        resume = subprocess.Popen([BIN / "fleet", "rollout", "resume", rid, "--json"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        out2, err2 = _finish(resume, url, rid, budget, f"`fleet rollout resume` (the controller exited {proc.returncode}: "
                                                       f"{err[-1500:]})")
        assert resume.returncode == 0, (err[-1500:], err2[-3000:], _status(url, rid))
    _check_outcome(lab, RolloutStore(Store(url)), rid, t0, expires, f"redis down {down_s}s")
