"""Driving a rollout: waves, canaries, max unavailable per site, a failure budget, rollback, resume.

Everything the driver knows is in Redis (fleet.state.store.RolloutStore), so
`fleet rollout resume ID` in any process continues exactly where a halted or
crashed run stopped. Per-phone work (render, publish, reboot; rollback) is a
short Celery task on the site's queue; verification is read from the store,
fed by the site's collectors, so no worker slot waits on a rebooting phone.
A phone counts as unavailable from the moment it is sent to be rebooted until
it is verified (or settled otherwise), and no site ever has more than its
`max_unavailable` such phones.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import kombu.exceptions
import redis

from soundpoint.values import plural
from fleet.config import inventory as inv_mod
from fleet.config.inventory import Inventory
from fleet.experiment import playbook as experiment_playbook
from fleet.rollout import backups as rollout_backups
from fleet.rollout import playbook as rollout_playbook
from fleet.rollout import policy
from fleet.rollout import applied
from fleet.rollout.plan import limit_macs, plan
from fleet.rollout.playbook import RolloutPlaybook
from fleet.state.lease import LeaseLost, SiteLease, default_ttl
from fleet.state.store import RolloutStore, Store
from fleet.worker.app import app, site_queue
from soundpoint.deadline import Deadline, poll_until

IN_FLIGHT = policy.IN_FLIGHT
FAILED = policy.FAILED
FINISHED = policy.FINISHED
# Redis (and the Celery broker in it) unreachable: the driver waits for it, bounded by its lease's TTL
REDIS_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, kombu.exceptions.OperationalError)
# a dispatched task that shows no progress this long is sent again (its worker died with it)
DISPATCH_STALL_S = float(os.environ.get("FLEET_DISPATCH_STALL", str(policy.DISPATCH_STALL_S)))
# how often a running wave re-reads every phone in full, beside the change feeds
FULL_READ_S = 5.0
MIN_PASS_S = 0.02
# how often the per-site counts go to `progress` while a wave runs (a bar redraws ~10 times a second; counting every
# phone of a 10,000-phone rollout on every pass cost more than the decisions themselves); always at a wave's end
PROGRESS_S = 0.25


def new_id(name: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + name[:20] + "-" + uuid.uuid4().hex[:4]


@dataclass
class Outcome:
    status: str
    reason: str
    counts: dict
    interrupted: str = ""    # the stop signal that ended the run ("SIGINT", "SIGTERM", ...), "" when none did


@dataclass
class DrillResult:
    passed: bool
    experiment: str = ""   # the drill's experiment id: its report and event log


DrillFn = Callable[[str, str, str], "DrillResult | bool"]


def load_drill(path: str, site: str, inv: Inventory) -> experiment_playbook.ExperimentPlaybook:
    """The drill's experiment playbook, aimed at the canary site and checked against the inventory."""
    drill = experiment_playbook.load(path).model_copy(update={"site": site})
    experiment_playbook.check_against(drill, inv, path)
    return drill


def experiment_drill(inv: Inventory, store: Store) -> DrillFn:
    """The failover drill gate: the drill's experiment playbook, run on the canary site under the rollout's lease.

    Returns fn(drill playbook path, site, lease holder) -> DrillResult, which
    runs the experiment to its end, waiting between its moves: for a driver in
    a process that may wait (the command line). A scheduled rollout, driven in
    ticks inside Celery tasks, runs the same experiment one move per tick
    (fleet.rollout.ticks), never waiting on the drill's router tasks.
    """
    def run(path: str, site: str, holder: str) -> DrillResult:
        from fleet.experiment.runner import ExperimentRunner  # in-function: 0.4 s of collectors; a drill only

        result = ExperimentRunner(load_drill(path, site, inv), inv, store, lease_holder=holder).run()
        store.finish_experiment(result.id, result.passed, "")
        return DrillResult(result.passed, result.id)

    return run


class RolloutDriver:
    """Drives one rollout to its end under an exclusive lease on every site it touches.

    The lease holder is unique to this driver (fleet.state.lease), so a second driver
    of the same rollout (a redelivered scheduled task, a second `resume`) is
    refused while this one is alive, and a driver whose lease lapses or is taken
    stops before its next action; the rollout stays resumable.
    """

    def __init__(self, rid: str, inventory: Inventory, store: Store, playbook: RolloutPlaybook,
                 say: Callable[[str], None] = lambda s: None, progress: Callable[[dict], None] = lambda c: None,
                 poll: float = 0.1, drill: DrillFn | None = None, lease_ttl: float | None = None,
                 watch: Callable[[Mapping[str, Mapping[str, str]]], None] = lambda records: None) -> None:
        self.rid, self.inv, self.store, self.pb = rid, inventory, store, playbook
        self.rs = RolloutStore(store)
        self.say, self.progress, self.poll = say, progress, poll
        # each pass's phone records (MAC -> record), for per-phone progress lines (fleet.rollout.progress)
        self.watch = watch
        # the playbook's drill always runs (a caller that forgot to pass one must not skip the gate)
        self.drill = drill if drill is not None else experiment_drill(inventory, store)
        self.lease_ttl = lease_ttl or default_ttl()
        self.lease: SiteLease | None = None
        self._away_since = 0.0
        self._downs: dict[str, float] = {}   # MAC -> its last shutdown event (line_down_at), as last read
        # phones whose records may have changed since `watch` last saw them (None: all of them, after a full read):
        # a pass shows `watch` only those, not the whole rollout every time
        self._touched: set[str] | None = None
        self._progress_due = 0.0             # monotonic time of the next `progress` call while a wave runs
        meta = self.rs.get(rid)
        self.plan = meta["plan"]
        self.site_of = {p["mac"]: p["site"] for p in self.plan["phones"]}
        self._entries = {p["mac"]: p for p in self.plan["phones"]}
        self.budget_total = int(meta.get("budget_override") or self.plan["budget_total"])
        self.limits = policy.Limits.of(self.plan, playbook, self.budget_total, DISPATCH_STALL_S)

    # ---------------------------------------------------------------- leases
    def _sites(self) -> list[str]:
        return sorted(set(self.site_of.values()))

    def _check_lease(self) -> None:
        """Before anything that touches a site: stop (LeaseLost) if this driver may no longer own it."""
        if self.lease is not None:
            self.lease.check()

    # ---------------------------------------------------------------- main loop
    def run(self, only_from: tuple[str, ...] | None = None) -> Outcome:
        """Drive the rollout; raises LeaseHeld (nothing done) if another run holds one of its sites.

        With `only_from`, the rollout is driven only if, once the lease is ours,
        its status is one of those: a copy that was waiting for the lease while
        another run finished the rollout does not run it a second time.
        """
        with SiteLease(self.store, self._sites(), owner=f"rollout:{self.rid}", ttl=self.lease_ttl,
                       on_lost=lambda why: self.say(f"lease lost: {why}")) as lease:
            self.lease = lease
            status = self.rs.get_field(self.rid, "status")
            if only_from is not None and status not in only_from:
                return Outcome(status or "?", f"not driven again: the rollout is already {status}",
                               self._counts_if_reachable())
            self.rs.set(self.rid, status="running", reason="", driver=lease.holder)
            self.rs.log(self.rid, "run", holder=lease.holder, pid=os.getpid(), host=socket.gethostname())
            try:
                outcome = self._drive()
            except KeyboardInterrupt as exc:
                # fleet.experiment.signals.Interrupted names the signal (SIGTERM, SIGHUP); a bare one is Ctrl-C
                signame = str(getattr(exc, "signame", "SIGINT"))
                said = "Ctrl-C" if signame == "SIGINT" else signame
                outcome = Outcome("halted", f"interrupted ({said}); `fleet rollout resume` continues",
                                  self._counts_if_reachable(), interrupted=signame)
            except LeaseLost as exc:
                outcome = Outcome("halted", f"stopped: {exc}; `fleet rollout resume` continues", self._counts_if_reachable())
        # the lease is released: record the outcome (a resume may already hold the sites; then it is not ours to write)
        self._record(outcome, lease.holder, lease.lost.is_set())
        return outcome

    def _record(self, outcome: Outcome, holder: str, lost: bool) -> None:
        """Write the run's outcome and have the backups removed; not the status if the lease was lost and another
        run drives the rollout now."""
        try:
            self.rs.log(self.rid, "end", status=outcome.status, reason=outcome.reason, counts=outcome.counts,
                        holder=holder)
            if lost and self.rs.get_field(self.rid, "driver") != holder:
                return   # another run drives the rollout now: its status is not ours to write
            self.rs.set(self.rid, status=outcome.status, reason=outcome.reason, finished=time.time())
            self._remove_backups(outcome)
        except REDIS_AWAY as exc:   # the outcome stands; Redis still says "running", and a resume continues
            self.say(f"could not record the outcome, Redis is unreachable ({type(exc).__name__})")

    def _remove_backups(self, outcome: Outcome) -> None:
        """Have each site's worker delete this run's `<file>.before-<id>` backups: they may hold SIP passwords.

        Only once the run is finished (done, or aborted with no phone still in
        flight): a halted run can be resumed and its phones rolled back, which
        needs them. `keep_backups: true` in the playbook keeps them.
        """
        if outcome.status not in FINISHED or self.pb.keep_backups:
            return
        busy = [m for m, st in self.rs.phones(self.rid, list(self.site_of)).items() if st.get("state") in IN_FLIGHT]
        if busy:
            self.rs.log(self.rid, "backups_kept", reason=f"{plural(len(busy), 'phone')} still in flight", phones=busy[:20])
            return
        rollout_backups.send_removal(self.rid, self._sites())
        self.rs.log(self.rid, "backups_removal_sent", sites=self._sites())

    def _counts_if_reachable(self) -> dict:
        try:
            return self.counts()
        except REDIS_AWAY:
            return {}

    def _drive(self) -> Outcome:
        for wave, macs in enumerate(self.plan["waves"]):
            while True:
                self._check_lease()
                try:
                    states = self.rs.phones(self.rid, macs)
                    break
                except REDIS_AWAY as exc:
                    self._redis_away(exc)
            if policy.wave_settled(macs, states):
                continue
            self.say(f"wave {wave}: {plural(len(macs), 'phone')}"
                     + (" (canaries)" if wave == 0 and self.pb.strategy.canary else ""))
            self.rs.log(self.rid, "wave", wave=wave, phones=len(macs))
            halted = self._run_wave(wave, macs)
            if halted:
                return halted
            if policy.drill_due(wave, self.pb.strategy.canary, self.pb.drill) and self.drill is not None:
                halted = self._drill_gate(self.site_of[macs[0]])
                if halted:
                    return halted
        return Outcome("done", "", self.counts())

    def _drill_gate(self, canary_site: str) -> Outcome | None:
        """The failover drill on the canary site, under this driver's lease; a drill that fails or cannot run halts."""
        assert self.pb.drill is not None
        self.say(f"failover drill on canary site {canary_site}: {self.pb.drill}")
        self._check_lease()
        holder = self.lease.holder if self.lease is not None else f"rollout:{self.rid}"
        try:
            res: DrillResult | bool | Exception = self.drill(self.pb.drill, canary_site, holder)
        except Exception as exc:  # a drill that cannot run (bad playbook, no router) fails the gate, with why
            res = exc
        return self._drill_verdict(canary_site, res, holder)

    def _drill_verdict(self, canary_site: str, res: DrillResult | bool | Exception, holder: str) -> Outcome | None:
        """What the drill's result means for the rollout: go on (None), or halted, with why."""
        assert self.pb.drill is not None
        if isinstance(res, Exception):
            self.rs.log(self.rid, "drill", site=canary_site, passed=False, error=str(res)[:300])
            return Outcome("halted", f"failover drill could not run on {canary_site}: {res}"[:300], self.counts())
        if not isinstance(res, DrillResult):
            res = DrillResult(bool(res))
        self.rs.log(self.rid, "drill", site=canary_site, passed=res.passed, experiment=res.experiment, holder=holder)
        self._check_lease()
        if not res.passed:
            return Outcome("halted", f"failover drill {self.pb.drill} failed on canary site {canary_site}", self.counts())
        return None

    def _run_wave(self, wave: int, macs: list[str]) -> Outcome | None:
        """One wave, driven from an in-memory snapshot of every phone's rollout state.

        The snapshot is kept current by the rollout's change feed (tasks' state
        changes) and the collectors' observation feed, so a pass reads only the
        phones something happened to; a full read every FULL_READ_S seconds is
        the safety net for anything a feed lost (a trimmed stream, a Redis restart).
        What to do with what it read is fleet.rollout.policy's decision.
        """
        deadline = Deadline(self.limits.progress_deadline)
        everyone = list(self.site_of)
        wave_set = set(macs)
        positions: dict[str, str] | None = None
        snapshot: dict[str, dict] = {}
        last_full: Deadline | None = None   # when the next full read is due
        recheck = set(macs)          # phones whose verification must be looked at this pass
        while True:
            started = time.monotonic()
            self._check_lease()
            try:
                if positions is None:
                    positions = self.rs.feed_positions(self.rid)
                abort = self.rs.get_field(self.rid, "abort") == "1"
                if not abort:
                    # the wave's first pass waits for nothing: its phones are read in full below anyway, and a
                    # fresh feed has nothing to say yet (a blocking read there held every wave's start `poll` back)
                    changed, observed = self.rs.feed_read(positions, block=self.poll if last_full is not None else None)
                    if last_full is None or last_full.expired:
                        snapshot = self.rs.phones(self.rid, everyone)
                        last_full = Deadline(FULL_READ_S)
                        recheck |= wave_set
                        self._touched = None
                    elif changed:
                        known = [m for m in changed if m in self.site_of]
                        snapshot.update(self.rs.phones(self.rid, known))
                        if self._touched is not None:
                            self._touched.update(known)
                    recheck |= (changed | observed) & wave_set
                decided = self._decide(wave, macs, snapshot, recheck, abort, deadline.expired)
                recheck = set()
                if decided.verdict in (policy.HALT, policy.ABORT):
                    self._settle(macs)
                    return Outcome("aborted" if decided.verdict == policy.ABORT else "halted", decided.reason,
                                   self.counts())
                if decided.verdict == policy.WAVE_DONE:
                    return None
                self._check_lease()
                self._carry_out(decided.dispatch, snapshot)
                self._redis_back()
            except REDIS_AWAY as exc:
                self._redis_away(exc)
                last_full, recheck = None, set(macs)   # once it is back, read every phone again
                continue
            time.sleep(max(0.0, MIN_PASS_S - (time.monotonic() - started)))   # busy feeds: a pass at most every 20 ms

    def _decide(self, wave: int, macs: list[str], snapshot: dict[str, dict], recheck: set[str], abort: bool,
                deadline_passed: bool) -> policy.Step:
        """One decision on a wave from what was read (the policy's), with its actions carried out; the dispatch it
        decided is the caller's to send, after it checked the lease again."""
        # the records of the phones to look at only (to_observe reads no other): not a dict of the whole wave each pass
        observed_now = {} if abort else self._observed({m: snapshot.get(m, {}) for m in recheck}, recheck)
        decided = policy.step(wave, macs, snapshot, observed_now, self.limits, now=time.time(),
                              deadline_passed=deadline_passed, abort=abort, downs=self._downs)
        self._carry_out(decided.actions, snapshot)
        if decided.verdict != policy.ABORT:
            if decided.verdict != policy.CONTINUE or time.monotonic() >= self._progress_due:
                self.progress(self.counts_by_site(snapshot))
                self._progress_due = time.monotonic() + PROGRESS_S
            touched, self._touched = self._touched, set()
            self.watch(snapshot if touched is None else {m: snapshot[m] for m in touched if m in snapshot})
        return decided

    def _observed(self, states: dict[str, dict], recheck: set[str]) -> dict[str, dict]:
        """The collectors' view (server index -> state and time) of the phones worth looking at this pass."""
        looked_at = policy.to_observe(states, recheck)
        if not looked_at:
            return {}
        found = self.store.phone_states(looked_at)
        # each phone's last shutdown event, read with the same states: did a check-sync that need not reboot it?
        self._downs.update({m: st.line_down_at for m, st in found.items() if st.line_down_at})
        return {m: st.servers for m, st in found.items()}

    def _redis_away(self, exc: Exception) -> None:
        """Redis (or the broker in it) is unreachable: wait for it, as long as the lease is not lost.

        Every write the driver makes is repeated or re-derived on a later pass
        (a phone marked dispatched whose task was never sent is sent again after
        DISPATCH_STALL_S), so an outage mid-pass leaves nothing half done. The
        lease's TTL bounds the wait: past it, `_check_lease` stops the driver.
        """
        if not self._away_since:
            self._away_since = time.monotonic()
            self.say(f"Redis unreachable ({type(exc).__name__}); waiting for it while the lease lasts")
        time.sleep(1.0)

    def _redis_back(self) -> None:
        if self._away_since:
            self.say(f"Redis is back after {time.monotonic() - self._away_since:.0f}s")
            self._away_since = 0.0

    def _settle(self, macs: list[str]) -> None:
        """Stop sending work; let phones already rebooting finish (verified, failed or rolled back)."""
        def nothing_in_flight() -> bool:
            self._check_lease()
            try:
                return self._settle_pass(macs)
            except REDIS_AWAY as exc:
                self._redis_away(exc)
                return False

        poll_until(nothing_in_flight, self.limits.settle_within, self.poll)

    def _settle_pass(self, macs: list[str]) -> bool:
        """One look at a wave that sends no more work: settle what can be settled; True once nothing is in flight."""
        states = self.rs.phones(self.rid, macs)
        actions, done = policy.settle(macs, states, self._observed(states, set(macs)), self.limits, time.time(),
                                      self._downs)
        self._carry_out(actions, states)
        self.watch(states)
        return done

    # ---------------------------------------------------------------- carrying out the policy's actions
    def _carry_out(self, actions: list[policy.Action], snapshot: dict[str, dict]) -> None:
        """The actions' records (the phone's pushed config once verified), writes and events in one round trip, in
        order; then their tasks. Every task goes out after its phone's record says so: a run that stops in between
        leaves a phone dispatched with no task, which a later pass sends again (DISPATCH_STALL_S)."""
        if not actions:
            return
        with self.rs.batch() as batch:
            for a in actions:
                if a.kind == policy.VERIFIED:
                    self.store_pushed(a.mac, self._entries[a.mac], batch)
                if a.fields:
                    self._set(snapshot, a.mac, batch, **a.fields)
                if a.event:
                    batch.log(self.rid, a.event["kind"], **{k: v for k, v in a.event.items() if k != "kind"})
        sends = [a for a in actions if a.task in ("push", "rollback")]
        if sends:
            # one producer (a broker connection taken from the pool once) for the pass's tasks, not one each
            with app.producer_or_acquire() as producer:
                for a in sends:
                    if a.task == "push":
                        self._send_push(a.mac, a.attempt, producer)
                    else:
                        self._send_rollback(a.mac, producer)
        for a in actions:
            if a.kind == policy.VERIFIED and a.fields.get("applied"):
                self.say(f"{a.mac}: verified, the new files applied {a.fields['applied']} (check-sync, "
                         "alwaysReboot=0; registered again since the push)")

    def _set(self, snapshot: dict[str, dict], mac: str, rs: RolloutStore | None = None, **fields) -> None:
        """Write a phone's fields (through `rs`, a batch, when given) and mirror them in the snapshot, so this pass's
        later decisions see them."""
        (rs or self.rs).set_phone(self.rid, mac, **fields)
        snapshot.setdefault(mac, {}).update({k: str(v) for k, v in fields.items()})
        if self._touched is not None:
            self._touched.add(mac)

    # The rollout's tasks are sent by name (fleet/rollout/tasks.py defines them): that module imports the
    # scheduled run, which imports this driver, so importing it here would close a circle.
    # `argsrepr`: the arguments as the message shows them (an id, a MAC, a number: nothing secret), written here
    # rather than by Celery's general-purpose saferepr (3 % of the controller process's CPU in a 1,000-phone run).
    def _send_push(self, mac: str, attempt: int, producer=None) -> None:
        args = (self.rid, mac, attempt)
        app.send_task("fleet.rollout_push", args=args, queue=site_queue(self.site_of[mac]), ignore_result=True,
                      producer=producer, argsrepr=repr(args))

    def _send_rollback(self, mac: str, producer=None) -> None:
        args = (self.rid, mac)
        app.send_task("fleet.rollout_rollback", args=args, queue=site_queue(self.site_of[mac]), ignore_result=True,
                      producer=producer, argsrepr=repr(args))

    def store_pushed(self, mac: str, entry: dict, rs: RolloutStore | None = None) -> None:
        # secrets as references (names in the secrets file, never values): the next plan diffs against them
        (rs or self.rs).set_pushed(mac, {**entry["params"], **entry.get("secret_refs", {})}, entry["config_hash"])

    # ---------------------------------------------------------------- accounting
    def counts(self) -> dict:
        states = self.rs.phones(self.rid, list(self.site_of))
        counts: dict = {"total": len(states)}
        for st in states.values():
            counts[st.get("state", "?")] = counts.get(st.get("state", "?"), 0) + 1
        return counts

    def counts_by_site(self, states: dict[str, dict]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for mac, st in states.items():
            c = out.setdefault(self.site_of[mac], {"total": 0, "settled": 0, "failed": 0})
            c["total"] += 1
            c["settled"] += st.get("state") in policy.SETTLED
            c["failed"] += st.get("state") in FAILED
        return out


class Overloaded(ValueError):
    """The change would push a registrar over its REGISTER/s limit (R6) and the playbook does not allow it."""


def create(playbook_path: str, inventory_path: str, store: Store, rid: str | None = None, exclusive: bool = False,
           limit: list[str] | None = None, loaded: tuple | None = None):
    """Validate, plan and record a rollout; returns (id, playbook, inventory, plan). Nothing is touched yet.

    The plan stacks on what each phone runs now (fleet.rollout.applied). `limit` (`--limit` items: MACs, sites,
    models) narrows the targets; it is recorded with the rollout, whose stored plan holds only those phones, so a
    resume keeps it. With `exclusive`, store.RolloutExists is raised if `rid` was created before (by another copy
    of the same run). `loaded`: the (playbook, inventory) the caller has just loaded from these paths and checked
    (`fleet rollout run`): not read and parsed a second time (a 1,000-phone inventory: 0.4 s of the command's start)."""
    if loaded is not None:
        pb, inv = loaded
    else:
        pb = rollout_playbook.load(playbook_path)
        inv = inv_mod.load(inventory_path)
    rid = rid or new_id(pb.name)
    rs = RolloutStore(store)
    only = limit_macs(inv, limit) if limit else None
    now = applied.read(rs, [ph.mac for s in inv.sites for ph in s.phones])
    p = plan(inv, pb, rid, limits=inv.registrar_limits, limit=only, applied=now)
    if p.overloaded and not pb.strategy.allow_overload:
        raise Overloaded("; ".join(p.overloaded))
    rs.create(rid, pb.name, p.to_dict(), {"playbook_path": str(Path(playbook_path).resolve()),
                                          "inventory_path": str(Path(inventory_path).resolve()),
                                          "limit": ",".join(limit or []),
                                          "keep_backups": "1" if pb.keep_backups else "0"}, exclusive=exclusive)
    return rid, pb, inv, p
