"""A scheduled rollout's ticks (fleet.rollout.ticks), without a worker or a lab: each tick is one move that never
waits, numbered so that a copy of a tick does nothing, under a lease held across ticks; the drill's experiment runs
one move per tick, its state kept in the rollout's record between them.

The phones' work (pushes) is played here by writing their rollout states, as a site's worker would.
"""
from __future__ import annotations

import base64
import json
import time
import uuid

import pytest

from fleet.experiment import sent_task as sent_task_mod
from fleet.experiment.runner import ExperimentRunner
from fleet.experiment.sent_task import SentTask
from fleet.rollout.driver import create, load_drill
from fleet.rollout.ticks import Tick, TickedRollout
from fleet.state.store import LeaseHeld, RolloutStore, Store
import fleet.rollout.tasks  # noqa: F401  (registers the task names the driver sends)
from fleet.worker.app import app, configure, site_queue

INVENTORY = """name: lab
firmware_family: uc-5.x
secrets_file: secrets.yml
provider: {{name: voip.example}}
params:
  reg.1.server.1.address: voip.example
  reg.1.server.1.expires: 300
  reg.1.server.2.address: 127.10.0.1
  reg.1.server.2.expires: 300
  reg.1.server.2.failOver.reRegisterOn: 1
sites:
  - name: {site}
    gateway: 127.10.0.1
    boot_server: {{url: "http://127.10.0.3/", credentials: boot}}
    router: {{driver: linux_ssh, address: 127.10.0.1, credentials: r, wan_interface: wan0}}
    phones:
      - {{mac: "0004f2000001", model: VVX 410, address: 127.0.0.2, credentials: admin}}
      - {{mac: "0004f2000002", model: VVX 410, address: 127.0.0.3, credentials: admin}}
"""


@pytest.fixture()
def rollout(tmp_path, redis_url):
    """A planned two-wave rollout (a canary, then one more phone) with a drill of one short wait, on its own site."""
    configure(redis_url)
    site = f"tk{uuid.uuid4().hex[:6]}"
    (tmp_path / "inv.yml").write_text(INVENTORY.format(site=site))
    (tmp_path / "secrets.yml").write_text("".join(f"{n}: {{username: u, password: pw}}\n" for n in ("boot", "admin", "r")))
    (tmp_path / "secrets.yml").chmod(0o600)
    (tmp_path / "drill.yml").write_text(f"kind: experiment\nname: tiny-drill\nsite: {site}\n"
                                        "steps:\n  - {name: pause, wait: 0.3}\n")
    (tmp_path / "ro.yml").write_text(f"kind: rollout\nname: tk\nparams: {{reg.1.server.1.expires: 33}}\n"
                                     "strategy: {canary: 1, wave_size: 1, max_unavailable: 1, failure_budget: {total: 0}}\n"
                                     f"verify: {{registered_to: [1], within: 25}}\ndrill: {tmp_path / 'drill.yml'}\n")
    store = Store(redis_url)
    rid, pb, inv, _ = create(str(tmp_path / "ro.yml"), str(tmp_path / "inv.yml"), store, f"tk-{uuid.uuid4().hex[:8]}")
    return store, rid, pb, inv, site


def _driver(rollout) -> TickedRollout:
    store, rid, pb, inv, _ = rollout
    return TickedRollout(rid, inv, store, pb)


def _run_ticks(rollout, holder: str, first: int, until, limit: int = 200) -> tuple[int, Tick]:
    """Tick (each one a fresh driver, as in a new task) until `until(tick)`; the next number and the last tick."""
    number, tick = first, None
    for _ in range(limit):
        started = time.monotonic()
        tick = _driver(rollout).tick(holder, number)
        assert time.monotonic() - started < 2, "a tick waited"
        if until(tick):
            return number, tick
        assert tick.next_tick == number + 1, tick
        number = tick.next_tick
        time.sleep(min(tick.countdown, 0.1))
    pytest.fail(f"no end after {limit} ticks: {tick}")


def _sent_to(store: Store, site: str) -> list[tuple[str, list]]:
    """The tasks waiting in a site's queue (no worker serves it here): each one's name and arguments; the queue
    is emptied."""
    raw = store.r.lrange(site_queue(site), 0, -1)
    store.r.delete(site_queue(site))
    found = []
    for item in reversed(raw):   # LPUSHed: the oldest last
        message = json.loads(item)
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["task"] in app.tasks, message["headers"]["task"]
        found.append((message["headers"]["task"], args))
    return found


def test_claims_let_one_copy_of_each_tick_run_and_take_over_from_a_dead_one(redis_url):
    rs = RolloutStore(Store(redis_url))
    rid = f"claims-{uuid.uuid4().hex[:6]}"
    assert rs.claim_tick(rid, 1, stale_after=30) == "run"
    assert rs.claim_tick(rid, 1, stale_after=30) == "busy"     # a copy while it runs
    rs.tick_done(rid, 1)
    assert rs.claim_tick(rid, 1, stale_after=30) == "done"     # a copy after it ran
    assert rs.claim_tick(rid, 2, stale_after=30) == "run"
    assert rs.claim_tick(rid, 2, stale_after=0.05) == "busy"
    time.sleep(0.1)
    assert rs.claim_tick(rid, 2, stale_after=0.05) == "run"    # the copy that claimed it died with its worker


def test_ticks_drive_the_rollout_through_its_drill_to_done_and_give_the_lease_back(rollout):
    store, rid, _, _, site = rollout
    rs = RolloutStore(store)
    started = _driver(rollout).start()
    assert isinstance(started, tuple)
    holder, first = started
    assert first == 1 and store.lease_info(site)[0] == holder and rs.get_field(rid, "driver") == holder
    with pytest.raises(LeaseHeld):   # a second copy of the scheduled run: refused, nothing taken
        _driver(rollout).start()
    canary, other = rs.get(rid)["plan"]["waves"]

    # the canary is sent (by the task's name: the driver does not import the task module); the tick does not wait
    number, _ = _run_ticks(rollout, holder, first, lambda t: rs.phone(rid, canary[0]).get("state") == "dispatched")
    assert rs.phone(rid, other[0])["state"] == "pending"
    assert _sent_to(store, site) == [("fleet.rollout_push", [rid, canary[0], 1])]
    rs.set_phone(rid, canary[0], state="verified")           # as the site's worker and the verification would
    number, _ = _run_ticks(rollout, holder, number + 1, lambda t: bool(rs.get_field(rid, "drill_run")))
    drill_state = json.loads(rs.get_field(rid, "drill_run"))
    assert drill_state["runner"]["phase"] == "steps" and drill_state["site"] == site
    # a copy of the tick that started the drill does nothing; neither does a tick of another holder
    assert _driver(rollout).tick(holder, number).next_tick is None
    assert json.loads(rs.get_field(rid, "drill_run")) == drill_state
    stranger = f"rollout:{rid}:{'0' * 12}"
    assert _driver(rollout).tick(stranger, number + 1).next_tick is None
    # the drill runs move by move, then wave 1 goes out
    number, _ = _run_ticks(rollout, holder, number + 1, lambda t: rs.phone(rid, other[0]).get("state") == "dispatched")
    drill = next(e for e in rs.events(rid) if e["kind"] == "drill")
    assert drill["passed"] is True and drill["holder"] == holder
    assert store.experiment(drill["experiment"])["status"] == "passed"
    assert rs.get_field(rid, "drill_gate") == "passed" and not rs.get_field(rid, "drill_run")
    rs.set_phone(rid, other[0], state="verified")
    _, last = _run_ticks(rollout, holder, number + 1, lambda t: t.next_tick is None)
    assert last.summary == {"id": rid, "status": "done"} and not last.failure
    assert rs.get_field(rid, "status") == "done" and store.lease_info(site)[0] is None
    assert _sent_to(store, site) == [("fleet.rollout_push", [rid, other[0], 1]), ("fleet.rollout_cleanup", [rid, site])]
    kinds = [e["kind"] for e in rs.events(rid)]
    assert kinds.count("run") == 1 and kinds.count("end") == 1 and kinds.count("drill") == 1, kinds


def test_a_lost_lease_halts_the_rollout_and_a_drill_restores_the_wan_first(rollout, monkeypatch):
    """The lease is taken from under a drill that cut the WAN: the drill is abandoned, its restore still sent and
    read on later ticks, then the rollout halts (resumable, as a driver run from the command line does) without
    touching the thief's lease."""
    store, rid, _, _, site = rollout
    rs = RolloutStore(store)
    sent: list[str] = []

    def send(sig, queue, site_name, timeout, expires=None):
        task = SentTask(sig.task, uuid.uuid4().hex, queue, site_name, time.time(), timeout)
        sent.append(sig.task)
        if sig.task == "fleet.router_restore":
            app.backend.mark_as_done(task.id, {"outcome": "restored", "state": {"link_up": True}, "probe": None})
        return task   # the cut gets no answer: the worker is slow

    monkeypatch.setattr(sent_task_mod.SentTask, "send", staticmethod(send))
    _outage_drill(rollout)
    holder, first = _driver(rollout).start()
    canary = rs.get(rid)["plan"]["waves"][0][0]
    number, _ = _run_ticks(rollout, holder, first, lambda t: rs.phone(rid, canary).get("state") == "dispatched")
    rs.set_phone(rid, canary, state="verified")
    number, _ = _run_ticks(rollout, holder, number + 1, lambda t: sent == ["fleet.router_outage"])
    store.break_lease(site)
    store.acquire_lease(site, "thief", ttl=60)
    _, last = _run_ticks(rollout, holder, number + 1, lambda t: t.next_tick is None)
    assert sent == ["fleet.router_outage", "fleet.router_restore"]
    assert last.failure.startswith("halted: stopped: the lease on site") and "thief" in last.failure
    assert rs.get_field(rid, "status") == "halted" and "thief" in rs.get_field(rid, "reason")   # resumable
    assert store.lease_info(site)[0] == "thief", "the ticks released a lease that was no longer theirs"
    drill = next(e for e in rs.events(rid) if e["kind"] == "drill")
    assert drill["passed"] is False and store.experiment(drill["experiment"])["status"] == "failed"
    assert any(e["kind"] == "lease_lost" for e in store.events(drill["experiment"]))
    [end] = [e for e in rs.events(rid) if e["kind"] == "end"]
    assert end["status"] == "halted" and "thief" in end["reason"] and end["holder"] == holder


def _drill_path(rollout) -> str:
    return str(rollout[2].drill)


def _outage_drill(rollout) -> None:
    """Make the rollout's drill cut the WAN, then wait long enough for the lease to be taken."""
    path = _drill_path(rollout)
    site = rollout[4]
    with open(path, "w") as f:
        f.write(f"kind: experiment\nname: cut-drill\nsite: {site}\n"
                "steps:\n  - {name: cut, outage: link-down, max_duration: 30}\n  - {name: hold, wait: 5}\n")


def test_a_drill_keeps_its_state_between_moves_and_never_waits(rollout, monkeypatch):
    """ExperimentRunner.advance() is one move: with the cut's answer not there yet it returns at once; the state
    it keeps (to_state) carries the sent task to another runner, which reads the answer when it comes."""
    store, rid, _, inv, site = rollout
    pending: list[SentTask] = []

    def send(sig, queue, site_name, timeout, expires=None):
        pending.append(SentTask(sig.task, uuid.uuid4().hex, queue, site_name, time.time(), timeout))
        return pending[-1]

    monkeypatch.setattr(sent_task_mod.SentTask, "send", staticmethod(send))
    _outage_drill(rollout)
    holder = f"rollout:{rid}:{'a' * 12}"
    drill = load_drill(_drill_path(rollout), site, inv)
    runner = ExperimentRunner(drill, inv, store, lease_holder=holder)
    runner.open()
    runner.prepare()
    started = time.monotonic()
    assert runner.advance() is False and runner.advance() is False
    assert time.monotonic() - started < 1 and [t.task for t in pending] == ["fleet.router_outage"]
    state = json.loads(json.dumps(runner.to_state()))
    app.backend.mark_as_done(pending[0].id, {"outcome": "cut", "deadman": "in 30s", "t_cut": time.time(),
                                             "state": {"link_up": False}, "probe": {"reachable": False, "detail": "x"}})
    again = ExperimentRunner.resume(drill, inv, store, state, lease_holder=holder)
    assert again.advance() is False                      # the cut passed; the 5 s wait has begun
    assert [s.name for s in again.result.steps] == ["cut"] and again.result.steps[0].passed
    assert again.open_outage is again.result.outages[0] and again.result.outages[0]["cut"] == "cut"
    third = ExperimentRunner.resume(drill, inv, store, json.loads(json.dumps(again.to_state())), lease_holder=holder)
    assert third.position == 1 and third.pending is not None and third.pending["started"] <= time.time()



def test_create_plans_from_what_the_command_loaded_without_reading_the_files_again(rollout, tmp_path):
    """`fleet rollout run` hands create() the playbook and inventory it loaded and checked: the rollout is planned
    from those (a 1,000-phone inventory is not parsed twice), so files changed since cannot slip in between."""
    store, _, pb, inv, _ = rollout
    (tmp_path / "ro.yml").write_text("kind: rollout\nname: [not, a, name]\n")     # would not load now
    (tmp_path / "inv.yml").write_text("sites: 7\n")
    rid, pb2, inv2, p = create(str(tmp_path / "ro.yml"), str(tmp_path / "inv.yml"), store,
                               f"tk-{uuid.uuid4().hex[:8]}", loaded=(pb, inv))
    assert (pb2, inv2) == (pb, inv)
    assert sorted(ph.mac for ph in p.phones) == ["0004f2000001", "0004f2000002"]
    assert RolloutStore(store).get(rid)["plan"]["waves"] == [["0004f2000001"], ["0004f2000002"]]
    with pytest.raises(Exception, match="ro.yml"):
        create(str(tmp_path / "ro.yml"), str(tmp_path / "inv.yml"), store, f"tk-{uuid.uuid4().hex[:8]}")
