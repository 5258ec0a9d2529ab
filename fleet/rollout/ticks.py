"""A scheduled rollout driven in short ticks, so that no Celery task ever waits on another one.

A scheduled rollout runs in a worker (task fleet.scheduled_rollout on the
fleet.control queue). Driving it to its end inside that task would hold a
worker slot for the whole rollout, and its failover drill would wait there on
the router tasks it sends to the site's queue: with one worker of concurrency 1
serving both queues, the tasks it waits for could never run. Instead:

- The scheduled task takes the rollout's lease (every site it touches, one
  holder unique to this run), records that holder as the rollout's driver, and
  sends the first tick (task fleet.rollout_tick, fleet.control queue).
- A tick renews the lease, makes one move that never waits (one pass of the
  current wave, exactly the pass `RolloutDriver.run` makes in its loop; one
  move of the drill's experiment, `ExperimentRunner.advance`; one look at a
  settling wave), keeps what it must remember in the rollout's record, and
  sends the next tick with a countdown. The last one records the outcome and
  releases the lease.

What a tick keeps in the rollout's record: `tick_wave` (the wave being run),
`tick_deadline` (that wave's progress deadline), `tick_settling` (a halted
wave letting its phones in flight finish), `drill_run` (the drill's experiment,
`ExperimentRunner.to_state()`), `drill_gate` ("passed" once it did),
`tick_lost` (why the lease was lost, while a drill still restores the WAN).

Exactly once: ticks are numbered, and `RolloutStore.claim_tick` lets one copy
of each number run (a redelivered copy finds it done, or running and comes
back once a copy that died with its worker no longer counts); a tick whose
holder is no longer the rollout's driver (a `fleet rollout resume` took over
after the lease lapsed) stops. The lease is held across ticks by renewing it
on each: a chain of ticks that stops (its worker gone for longer than the
lease's TTL) leaves the rollout resumable, as a crashed driver does.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from fleet.experiment.runner import STEPS, ExperimentRunner
from fleet.rollout import policy
from fleet.rollout.driver import REDIS_AWAY, DrillResult, Outcome, RolloutDriver, load_drill
from fleet.state.store import lease_holder_run

TICK_S = 0.5        # between two passes of a wave: phones reboot and register in seconds, not milliseconds
MIN_TICK_S = 0.1    # the shortest pause, while a drill waits for a router task's answer
# The lease is renewed by the ticks, not by a thread: a tick may wait in the queue behind the site's own tasks (one
# worker of concurrency 1 serving both queues: a restore retried on timeouts takes tens of seconds), so the lease
# outlives its last renewal by at least this long; it is also how long a chain of ticks that died blocks its sites.
TICK_LEASE_MIN_S = 120.0
DRIVABLE = ("planned", "running")   # a scheduled run drives its rollout only from these


@dataclass
class Tick:
    """What a tick did, for the task that ran it: the next tick to send (and when), what to return, or why to fail."""
    next_tick: int | None             # None: no tick follows (the rollout ended, or this copy had nothing to do)
    countdown: float = TICK_S
    summary: dict = field(default_factory=dict)
    failure: str = ""                 # the task fails with this: a scheduled rollout that did not end done


class TickedRollout(RolloutDriver):
    """The rollout driver, one non-blocking move per call of `tick()`; its state lives in the rollout's record."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lease_ttl = max(self.lease_ttl, TICK_LEASE_MIN_S)
        self.next_in = TICK_S   # when the next tick should come, as this tick's move found out

    # ---------------------------------------------------------------- the first tick's preparation
    def start(self) -> tuple[str, int] | Outcome:
        """Take the lease of every site for a new driver; (its holder, the first tick's number) to send.

        Raises LeaseHeld (nothing kept) while another driver holds one. An
        Outcome instead: the rollout is no longer drivable (another run finished
        it while this copy waited); the lease is given back.
        """
        holder = f"rollout:{self.rid}:{uuid.uuid4().hex[:12]}"
        taken: list[str] = []
        try:
            for site in self._sites():
                self.store.acquire_lease(site, holder, self.lease_ttl)
                taken.append(site)
        except BaseException:
            self._release(holder, taken)
            raise
        status = self.rs.get_field(self.rid, "status")
        if status not in DRIVABLE:
            self._release(holder, taken)
            return Outcome(status or "?", f"not driven again: the rollout is already {status}", self.counts())
        self.rs.set(self.rid, status="running", reason="", driver=holder, tick_lost="")
        self.rs.log(self.rid, "run", holder=holder, pid=os.getpid(), host=socket.gethostname(), ticks=True)
        return holder, int(self.rs.get_field(self.rid, "tick_done") or 0) + 1

    def _release(self, holder: str, sites: list[str]) -> None:
        for site in sites:
            try:
                self.store.release_lease(site, holder)
            except REDIS_AWAY:
                pass   # it expires by itself within its TTL

    # ---------------------------------------------------------------- one tick
    def tick(self, holder: str, number: int) -> Tick:
        """Tick `number` of the driver `holder`: one move, recorded; what to send next.

        Redis away (the broker with it) is waited out here, while the lease may
        still be ours: a tick that failed for it would send no next tick.
        """
        deadline = time.monotonic() + self.lease_ttl
        claimed = False
        while True:
            try:
                if not claimed:
                    refused = self._claim(holder, number)
                    if refused is not None:
                        return refused
                    claimed = True
                outcome = self._move(holder)
                if outcome is None:
                    self.rs.tick_done(self.rid, number)
                    self._redis_back()
                    return Tick(number + 1, self.next_in, {"id": self.rid, "tick": number})
                break
            except REDIS_AWAY as exc:
                if time.monotonic() > deadline:
                    raise
                self._redis_away(exc)
            except Exception as exc:    # no next tick: the rollout stays "running", resumable, and says why
                self.rs.log(self.rid, "ticks_stopped", holder=holder, tick=number,
                            reason=f"{type(exc).__name__}: {exc}"[:300])
                raise
        self._record(outcome, holder, lost=bool(self.rs.get_field(self.rid, "tick_lost")))
        self._release(holder, self._sites())
        self.rs.tick_done(self.rid, number)
        summary = {"id": self.rid, "status": outcome.status}
        if outcome.status != "done":
            return Tick(None, summary=summary, failure=f"{outcome.status}: {outcome.reason}")
        return Tick(None, summary=summary)

    def _claim(self, holder: str, number: int) -> Tick | None:
        """None when this copy runs tick `number`; else what to do instead (nothing, or look again later)."""
        driver = self.rs.get_field(self.rid, "driver")
        if driver != holder:   # a later driver took over (its own ticks, or `fleet rollout resume`)
            self.rs.log(self.rid, "ticks_stopped", holder=holder, reason=f"the rollout is driven by {driver} now")
            return Tick(None, summary={"id": self.rid, "tick": number, "note": f"driven by {driver} now"})
        claim = self.rs.claim_tick(self.rid, number, stale_after=self.lease_ttl)
        if claim == "done":
            return Tick(None, summary={"id": self.rid, "tick": number, "note": "a copy of a tick that already ran"})
        if claim == "busy":   # a copy runs it now; look again once a copy that died would no longer count
            return Tick(number, self.lease_ttl, {"id": self.rid, "tick": number, "note": "another copy runs it"})
        return None

    def _renew(self, holder: str) -> str:
        """Renew the lease on every site; why it is no longer ours, or "" while it is."""
        for site in self._sites():
            if not self.store.renew_lease(site, holder, self.lease_ttl):
                now, _ = self.store.lease_info(site)
                return f"the lease on site {site} is no longer ours " + (f"(now held by {lease_holder_run(now)})" if now else "(it expired)")
        return ""

    def _move(self, holder: str) -> Outcome | None:
        """One move of the rollout from its record: the outcome once it ended, None while it goes on."""
        meta = self.rs.get(self.rid)
        lost = meta.get("tick_lost") or self._renew(holder)
        if lost and not meta.get("tick_lost"):
            self.say(f"lease lost: {lost}")
            self.rs.set(self.rid, tick_lost=lost)
        if meta.get("drill_run"):   # a drill under way finishes its cleanup even without the lease
            return self._drill_move(holder, json.loads(meta["drill_run"]), lost)
        if lost:
            return Outcome("halted", f"stopped: {lost}; `fleet rollout resume` continues", self.counts())
        if meta.get("tick_settling"):
            return self._settle_move(json.loads(meta["tick_settling"]))
        wave = int(meta.get("tick_wave") or 0)
        if wave >= len(self.plan["waves"]):
            return Outcome("done", "", self.counts())
        macs = self.plan["waves"][wave]
        deadline = json.loads(meta.get("tick_deadline") or "null")
        if not deadline or deadline["wave"] != wave:
            deadline = {"wave": wave, "until": time.time() + self.limits.progress_deadline}
            self.rs.set(self.rid, tick_deadline=deadline)
            self.say(f"wave {wave}: {len(macs)} phones" + (" (canaries)" if wave == 0 and self.pb.strategy.canary else ""))
            self.rs.log(self.rid, "wave", wave=wave, phones=len(macs))
        snapshot = self.rs.phones(self.rid, list(self.site_of))
        self._touched = None      # a tick reads every phone afresh
        decided = self._decide(wave, macs, snapshot, set(macs), meta.get("abort") == "1",
                               time.time() >= deadline["until"])
        if decided.verdict in (policy.HALT, policy.ABORT):
            settling = {"wave": wave, "status": "aborted" if decided.verdict == policy.ABORT else "halted",
                        "reason": decided.reason, "until": time.time() + self.limits.settle_within}
            self.rs.set(self.rid, tick_settling=settling)
            return self._settle_move(settling)
        if decided.verdict == policy.WAVE_DONE:
            if policy.drill_due(wave, self.pb.strategy.canary, self.pb.drill) and meta.get("drill_gate") != "passed":
                return self._start_drill(holder, wave)
            self.rs.set(self.rid, tick_wave=wave + 1)
            self.next_in = MIN_TICK_S
            return None
        self._carry_out(decided.dispatch, snapshot)
        return None

    def _settle_move(self, settling: dict) -> Outcome | None:
        """A halted or aborted wave sends no more work; its phones in flight finish, or the settle time runs out."""
        if self._settle_pass(self.plan["waves"][settling["wave"]]) or time.time() >= settling["until"]:
            return Outcome(settling["status"], settling["reason"], self.counts())
        return None

    # ---------------------------------------------------------------- the failover drill, one move per tick
    def _start_drill(self, holder: str, wave: int) -> Outcome | None:
        """The canary wave is done: open the drill's experiment on the canary site, under this rollout's lease."""
        assert self.pb.drill is not None
        site = self.site_of[self.plan["waves"][wave][0]]
        self.say(f"failover drill on canary site {site}: {self.pb.drill}")
        try:
            runner = ExperimentRunner(load_drill(self.pb.drill, site, self.inv), self.inv, self.store,
                                      say=self.say, lease_holder=holder)
            runner.open()
        except REDIS_AWAY:
            raise
        except Exception as exc:   # a drill that cannot run (bad playbook, no router) fails the gate, with why
            return self._drill_verdict(site, exc, holder)
        drill = {"site": site, "wave": wave, "crashed": ""}
        try:
            runner.prepare()
        except REDIS_AWAY:
            raise
        except Exception as exc:
            drill["crashed"] = str(exc)[:300]
            runner.abandon()
        self._keep_drill(drill, runner)
        return None

    def _drill_move(self, holder: str, drill: dict, lost: str) -> Outcome | None:
        """One move of the drill's experiment; once it is done, what it means for the rollout (the same gate as
        `RolloutDriver._drill_gate`). A drill that broke, or whose lease was lost, restores the WAN first."""
        site = drill["site"]
        assert self.pb.drill is not None
        try:
            runner = ExperimentRunner.resume(load_drill(self.pb.drill, site, self.inv), self.inv, self.store,
                                             drill["runner"], lease_holder=holder, say=self.say)
        except Exception as exc:
            self.rs.set(self.rid, drill_run="")
            return self._drill_verdict(site, exc, holder)
        if lost:
            runner.abandon(f"stopped: {lost}; run abandoned", "lease_lost", reason=lost)
        try:
            done = runner.advance()
        except REDIS_AWAY:
            raise
        except Exception as exc:
            if runner.phase != STEPS:   # the cleanup itself failed: the drill cannot go on
                self.rs.set(self.rid, drill_run="")
                return self._drill_verdict(site, exc, holder)
            drill["crashed"] = str(exc)[:300]   # restore the WAN first, then fail the gate with why
            runner.abandon()
            done = False
        if not done:
            self._keep_drill(drill, runner)
            return None
        self.rs.set(self.rid, drill_run="")
        if drill["crashed"]:
            self.store.finish_experiment(runner.exp, False, "")
            return self._drill_verdict(site, RuntimeError(drill["crashed"]), holder)
        result = runner.finish()
        self.store.finish_experiment(result.id, result.passed, "")
        if lost:   # the drill was abandoned (its result says why); the rollout stops
            self.rs.log(self.rid, "drill", site=site, passed=result.passed, experiment=result.id, holder=holder)
            return Outcome("halted", f"stopped: {lost}; `fleet rollout resume` continues", self.counts())
        outcome = self._drill_verdict(site, DrillResult(result.passed, result.id), holder)
        if outcome is None:
            self.rs.set(self.rid, drill_gate="passed", tick_wave=drill["wave"] + 1)
        return outcome

    def _keep_drill(self, drill: dict, runner: ExperimentRunner) -> None:
        self.rs.set(self.rid, drill_run={**drill, "runner": runner.to_state()})
        self.next_in = max(MIN_TICK_S, min(runner.pause, TICK_S))

