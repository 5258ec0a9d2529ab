"""Run an experiment playbook against one site: outages through the router, verdicts from observations.

Safety comes first: a dead-man's switch is armed on the router before every
cut, the cut is proven from the router's own state and from a LAN-side probe
(an outage that did not take effect fails the run instead of passing it), and
the WAN is restored at the end, on error and on Ctrl-C. The site is held under
an exclusive lease for the whole run, and every operation goes into the
experiment's append-only event log.

The run is a sequence of non-blocking moves (`advance()`): a step sends its
device task and comes back for the answer (fleet.experiment.sent_task), an
expectation looks at the store once per move, a wait checks the clock. That is
what lets a scheduled rollout run its failover drill from short ticks without
ever waiting on a task inside a task (fleet.rollout.ticks keeps the run's
state, `to_state()`, in Redis between ticks). `run()` is the same moves in a
loop with pauses between them, for a caller that may wait: `fleet experiment
run`, or a rollout driven from the command line.
"""
from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from celery import Signature

from fleet.experiment import tasks
from fleet.worker.app import site_queue
from fleet.base.dns import ttl_of
from soundpoint import values
from fleet.config.inventory import Inventory, Phone, Site
from fleet.experiment import flap_run, flap_verdict, inbound_step, power_step
from fleet.experiment.playbook import (CallStep, ExpectStep, ExperimentPlaybook, FlapStep, InboundStep, OutageStep,
                                       PowerStep, RestoreStep, WaitStep)
from fleet.phoneconf.predict import servers
from fleet.state.lease import LeaseLost, SiteLease, default_ttl
from fleet.experiment.signals import Interrupted, SignalGuard
from fleet.state import durations, record
from fleet.state.sites import register_site
from fleet.state.store import RolloutStore, Store, foreign_sources
from fleet.base.outage import Outage, WanState
from fleet.experiment.failures import NotReached, StepFailed
from fleet.experiment.phone_facts import phone_facts
from fleet.experiment.sent_task import SentTask
from fleet.experiment.verdict import (Expectation, OutageWindow, PhoneVerdict, Reached, fallback_behaviour, judge_phone,
                      predicted_bounds, timeline)

TASK_TIMEOUT = 60.0
TASK_POLL_S = 0.05   # how often a waiting caller looks at a sent task's result again
SETTLE_S = 0.2       # after the cleanup, observations already in flight reach the store before the verdicts
# the phases of a run, in order: its steps, the cleanup (restore an outage left open, stop observing), the settle
STEPS, CLEANUP, SETTLE, DONE = "steps", "cleanup", "settle", "done"


@dataclass
class StepResult:
    name: str
    kind: str
    passed: bool
    elapsed_s: float
    message: str = ""
    detail: dict = field(default_factory=dict)


@dataclass
class ExperimentResult:
    id: str
    playbook: str
    site: str
    started: float
    finished: float = 0.0
    passed: bool = False
    steps: list[StepResult] = field(default_factory=list)
    phones: list[PhoneVerdict] = field(default_factory=list)
    outages: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    interrupted: str | None = None     # the signal that ended the run early, if one did
    capture: list[dict] = field(default_factory=list)   # SIP the wire sources saw (report writes capture.pcap)
    capture_left_out: int = 0          # datagrams not kept: the capture reached store.CAPTURE_MAX_BYTES
    # from the site collector's report: servers no wire source can see (and why), evidence sources failing
    unobservable: list[dict] = field(default_factory=list)
    evidence_errors: list[dict] = field(default_factory=list)
    evidence_foreign: list[dict] = field(default_factory=list)   # store.foreign_sources: SIP from non-phone addresses
    evidence_sources: list[str] = field(default_factory=list)   # the site's evidence sources, by label (report names)
    flaps: list[dict] = field(default_factory=list)   # each flap step's plan, cuts and per-phone counts (flap_run)


class ExperimentRunner:
    def __init__(self, playbook: ExperimentPlaybook, inventory: Inventory, store: Store,
                 say: Callable[[str], None] = lambda s: None, task_timeout: float = TASK_TIMEOUT,
                 lease_holder: str | None = None, progress: Callable[[str], None] = lambda s: None) -> None:
        self.pb = playbook
        self.inv = inventory
        self.store = store
        self.say = say
        # where a waiting step stands, redrawn in place (a spinner's text): "failover: 3/6 on server 2, 41 s left"
        self.progress = progress
        self.site: Site = inventory.site(playbook.site)
        self.queue = site_queue(self.site.name)
        self.task_timeout = task_timeout
        self.open_outage: dict | None = None
        self.lease_holder = lease_holder   # a rollout running this as its failover drill already holds the site
        self.lease: SiteLease | None = None   # the run's own lease (none when a rollout's drill: the rollout holds it)
        self._ttl_cache: dict[str, float | None] = {}   # primary's name -> the TTL the site's DNS gives it
        # where the run is: what to_state() keeps between the ticks of a drill
        self.exp = ""
        self.result: ExperimentResult | None = None
        self.initial: dict[str, dict] = {}
        self.phase = STEPS
        self.position = 0                  # the index of the step being run
        self.pending: dict | None = None   # that step's progress: when it started, the task it sent, what it saw
        self.settle_until = 0.0
        self.pause = TASK_POLL_S           # how long a caller that waits may sleep before the next advance()

    # ------------------------------------------------------------------ helpers
    def _family(self, phone: Phone) -> str:
        """The firmware family the phone runs (its own, else its site's or the inventory's)."""
        return phone.family.name

    def _dns_ttl(self, params: dict[str, str], family: str) -> float | None:
        """The TTL the site's DNS gives the primary's name, read once and only for a phone in DNSTTL mode."""
        primary = next(iter(servers(params, family=family)), None)
        if primary is None or primary.failback_mode != "DNSTTL" or not self.site.dns:
            return None
        name = primary.address
        if name not in self._ttl_cache:
            host, port = values.hostport(self.site.dns, "DNS server address")
            self._ttl_cache[name] = ttl_of(name, host, int(port or 53))
        return self._ttl_cache[name]

    def _send(self, sig: Signature, expires: float | None = None) -> None:
        """Send the current step's task to the site's queue; `expires`: seconds after which no worker may start
        it any more. The step reads the answer with `_answer()`, on this move or a later one."""
        assert self.pending is not None
        self.pending["sent"] = SentTask.send(sig, self.queue, self.site.name, self.task_timeout, expires).to_dict()

    def _answer(self) -> dict | None:
        """The answer to the task the current step sent, None while it may still come; never waits.

        Raises a StepFailed when there is none to use: a task that failed says
        why itself (TaskRefused); a timeout (NoWorker) or a lost worker
        (WorkerLost) is named with the task.
        """
        assert self.pending is not None
        answer = SentTask.from_dict(self.pending["sent"]).answer()
        if answer is None:
            self.pause = TASK_POLL_S
        return answer

    def _phones(self, selector) -> list[Phone]:
        phones = self.site.phones
        if selector.macs:
            wanted = {m.lower().replace(":", "") for m in selector.macs}
            phones = [p for p in phones if p.mac in wanted]
        if selector.models:
            phones = [p for p in phones if p.model in selector.models]
        return phones

    # ------------------------------------------------------------------ run
    def run(self, guard: SignalGuard | None = None) -> ExperimentResult:
        """Run the playbook. `guard` (the caller's, so that it also covers writing the report) turns the first
        Ctrl-C, SIGTERM or SIGHUP into an orderly stop and notes every later one."""
        if guard is not None:
            return self._run(guard)
        with SignalGuard() as own:
            return self._run(own)

    def _run(self, guard: SignalGuard) -> ExperimentResult:
        guard.defer()    # setting up: a signal now is noted, and stops the run before its first step
        self.open()
        try:
            self.prepare()
            if guard.received:
                raise Interrupted(signal.Signals[guard.received.pop(0)])
            guard.raising = True
            while self.phase == STEPS:
                self.advance()
                if self.phase == STEPS:
                    time.sleep(self.pause)
        except LeaseLost as exc:
            self.abandon(f"stopped: {exc}; run abandoned", "lease_lost", reason=str(exc))
        except Interrupted as exc:
            assert self.result is not None
            self.result.interrupted = exc.signame
            self.abandon(f"interrupted ({exc.signame}): run abandoned", "interrupted", signal=exc.signame)
        finally:
            # From here on every Ctrl-C, SIGTERM or SIGHUP is noted and ignored: the restore and the report come first.
            guard.defer()
            self.abandon()
            while not self.advance():
                time.sleep(self.pause)
        return self.finish([f"{name} received while the WAN was being restored or the report computed: ignored "
                            f"until both were done" for name in guard.received])

    # ------------------------------------------------------------------ the moves a run is made of
    def open(self) -> None:
        """Take the site's lease and create the experiment's record.

        The lease first: a run refused because the site is busy leaves no
        experiment record behind. A rollout running this as its drill already
        holds the site and renews it.
        """
        exp = self.store.new_experiment_id()
        if self.lease_holder is None:
            # a router shared with other sites is their WAN too: the outage this run makes is theirs as well
            shared = self.site.router.shared_with if self.site.router else []
            # held under the experiment's own id: a run refused for this lease names the id `experiment list` shows
            self.lease = SiteLease(self.store, [self.site.name, *shared], owner=f"experiment:{exp}", ttl=default_ttl(),
                                   wait_for_predecessor=False, on_lost=lambda why: self.say(f"lease lost: {why}"))
            self.lease.acquire()
        self.exp = self.store.new_experiment(self.site.name, self.pb.name, exp)
        self.result = ExperimentResult(id=self.exp, playbook=self.pb.name, site=self.site.name, started=time.time())

    def prepare(self) -> None:
        """Observe the site for this experiment and note where each phone stands; after it, undo with the cleanup."""
        exp = self.exp
        register_site(self.store, self.inv, self.site)
        self.store.set_observing(self.site.name, exp)
        # where each phone stood when the run began: the first lane segment of its timeline
        self.initial = {r["mac"]: r["state"] for r in self.store.phones(self.site.name)}
        self.store.log_event(exp, "start", playbook=self.pb.name, site=self.site.name,
                             initial={m: s.get("working_server") for m, s in self.initial.items()})
        self.say(f"experiment {exp}: {self.pb.name} on site {self.site.name} ({values.plural(len(self.site.phones), 'phone')})")

    def advance(self) -> bool:
        """Move the run on as far as it goes without waiting; True once it is ready for `finish()`.

        Steps run in order, each as far as it can (a step waiting for its
        task's answer, a phone, or the clock stays the current one); then the
        cleanup restores an outage left open and stops observing, then the
        observations in flight settle. `pause` says how long a caller may
        sleep before the next move. Raises LeaseLost (own lease) between steps.
        """
        self.pause = TASK_POLL_S
        if self.phase == STEPS:
            self._advance_steps()
        if self.phase == CLEANUP:
            self._advance_cleanup()
        if self.phase == SETTLE:
            left = self.settle_until - time.time()
            if left > 0:
                self.pause = left
            else:
                self.phase = DONE
        return self.phase == DONE

    def abandon(self, error: str = "", event: str = "", **data) -> None:
        """Run no more steps (a lost lease, a signal, a drill whose rollout lost its lease): the cleanup comes next.
        `error` goes into the result (it fails the run), `event` and `data` into the event log."""
        if self.phase != STEPS:
            return
        assert self.result is not None
        if error:
            self.result.errors.append(error)
        if event:
            self.store.log_event(self.exp, event, **data)
        self.phase, self.pending = CLEANUP, None

    def _advance_steps(self) -> None:
        exp, result, steps = self.exp, self.result, self.pb.steps
        assert result is not None
        while self.position < len(steps):
            step = steps[self.position]
            if self.pending is None:
                if self.lease is not None:
                    self.lease.check()     # LeaseLost: another run may own the site now; cut nothing more
                self.pending = {"started": time.time()}
            res = self._run_step(exp, step, result)
            if res is None:
                return                     # under way: the next move looks again
            res.elapsed_s = round(time.time() - self.pending["started"], 3)
            self.pending = None
            self.position += 1
            result.steps.append(res)
            self.store.log_event(exp, "step", name=res.name, passed=res.passed, message=res.message)
            self.say(f"{'PASS' if res.passed else 'FAIL'} {res.name} ({res.elapsed_s:.1f}s){': ' + res.message if res.message else ''}")
            if not res.passed and res.kind in ("outage", "flap"):
                break   # a fault that did not take effect makes the rest meaningless
        self.phase, self.pending = CLEANUP, None

    def _advance_cleanup(self) -> None:
        result = self.result
        assert result is not None
        if self.open_outage is not None:
            if self.pending is None:
                self.say("restoring the WAN (cleanup)")
                self.pending = {"started": time.time()}
            res = self._restore(self.exp, "cleanup", result)
            if res is None:
                return
            self.pending = None
            if not res.passed:
                result.errors.append(f"cleanup restore failed: {res.message}")
        self.store.set_observing(self.site.name, None)
        if self.lease is not None:
            self.lease.release()
        self.phase, self.settle_until = SETTLE, time.time() + SETTLE_S
        self.pause = SETTLE_S

    def finish(self, late_errors: list[str] | tuple[str, ...] = ()) -> ExperimentResult:
        """The verdicts and the evidence, once `advance()` said the run is done; `late_errors` fail it too."""
        exp, result = self.exp, self.result
        assert result is not None and self.phase == DONE
        self._verdicts(exp, result)
        result.capture = self.store.capture(exp)
        result.capture_left_out = self.store.capture_left_out(exp)
        evidence = self.store.site_evidence([self.site.name]).get(self.site.name, {})
        result.unobservable = evidence.get("unobservable", [])
        result.evidence_errors = [e for e in evidence.get("sources", []) if e.get("error")]
        result.evidence_sources = sorted({str(e.get("source")) for e in evidence.get("sources", []) if e.get("source")})
        result.evidence_foreign = foreign_sources(evidence)
        flap_verdict.judge(self, result)   # each flap's per-phone counts, and phones back late fail
        result.finished = time.time()
        result.errors.extend(late_errors)
        result.passed = (not result.errors and all(s.passed for s in result.steps)
                         and all(p.passed for p in result.phones))
        self.store.log_event(exp, "finish", passed=result.passed)
        # the site's failover/recovery histograms for /metrics (fleet.evidence.metrics), counted once per run
        durations.record(self.store, self.site.name, "experiment", exp,
                         {"failover": [p.failover_s for p in result.phones if p.failover_s is not None],
                          "recovery": [p.recovery_s for p in result.phones if p.recovery_s is not None]})
        self._record(result)
        return result

    def _record(self, result: ExperimentResult) -> None:
        """An experiment that cut the WAN adds its outage to the site's survivability record (fleet.state.record)."""
        cut = [o for o in result.outages if o.get("cut") in ("cut", "already-cut")]
        if not cut:
            return
        families = {p.mac: self._family(p) for p in self.site.phones}
        record.add(self.store, record.Outage("experiment", result.id, self.site.name, float(cut[0]["start"]), [
            record.PhoneOutcome(p.mac, p.model, families.get(p.mac, ""), p.firmware or "", p.failover_s, p.recovery_s,
                                p.passed, list(p.reasons)) for p in result.phones]))

    # ------------------------------------------------------------------ kept between the ticks of a drill
    def to_state(self) -> dict:
        """Where the run is, as JSON-able data: enough for `resume` in another process to carry on.
        Only for a run under someone else's lease (a rollout's drill): the run's own lease lives in its process."""
        result = self.result
        assert result is not None and self.lease is None
        open_at = next((i for i, o in enumerate(result.outages) if o is self.open_outage), None)
        return {"exp": self.exp, "started": result.started, "phase": self.phase, "position": self.position,
                "pending": self.pending, "settle_until": self.settle_until, "initial": self.initial,
                "steps": [asdict(s) for s in result.steps], "outages": result.outages, "errors": result.errors,
                "open_outage": open_at, "flaps": result.flaps}

    @classmethod
    def resume(cls, playbook: ExperimentPlaybook, inventory: Inventory, store: Store, state: dict,
               lease_holder: str, say: Callable[[str], None] = lambda s: None,
               task_timeout: float = TASK_TIMEOUT) -> "ExperimentRunner":
        """The run `to_state()` described, ready for its next `advance()`."""
        runner = cls(playbook, inventory, store, say=say, task_timeout=task_timeout, lease_holder=lease_holder)
        runner.exp = state["exp"]
        runner.result = ExperimentResult(id=state["exp"], playbook=playbook.name, site=runner.site.name,
                                         started=state["started"], steps=[StepResult(**s) for s in state["steps"]],
                                         outages=list(state["outages"]), errors=list(state["errors"]),
                                         flaps=list(state.get("flaps") or []))
        if state["open_outage"] is not None:
            runner.open_outage = runner.result.outages[state["open_outage"]]
        runner.phase, runner.position, runner.pending = state["phase"], state["position"], state["pending"]
        runner.settle_until, runner.initial = state["settle_until"], state["initial"]
        return runner

    def _run_step(self, exp: str, step, result: ExperimentResult) -> StepResult | None:
        if isinstance(step, OutageStep):
            return self._outage(exp, step, result)
        if isinstance(step, RestoreStep):
            return self._restore(exp, step.name, result)
        if isinstance(step, ExpectStep):
            return self._expect(exp, step, result)
        if isinstance(step, CallStep):
            return self._call(exp, step)
        if isinstance(step, WaitStep):
            return self._wait(step)
        if isinstance(step, InboundStep):
            judged = inbound_step.run(self, exp, step)
            return None if judged is None else StepResult(step.name, inbound_step.KIND, judged[0], 0, *judged[1:])
        if isinstance(step, PowerStep):
            return power_step.run(self, exp, step, StepResult)
        if isinstance(step, FlapStep):
            done = flap_run.advance(self, exp, step, result)
            return None if done is None else StepResult(step.name, "flap", done[0], 0, done[1], done[2])
        raise TypeError(f"unknown step {step!r}")

    def _wait(self, step: WaitStep) -> StepResult | None:
        assert self.pending is not None
        left = step.wait - (time.time() - self.pending["started"])
        if left > 0:
            self.progress(f"{step.name}: waiting, {left:.0f} s left")
            self.pause = min(left, 1.0)    # back each second: the countdown moves
            return None
        return StepResult(step.name, "wait", True, 0.0)

    def _outage(self, exp: str, step: OutageStep, result: ExperimentResult) -> StepResult | None:
        """Cut the WAN: the first move records the outage and sends the cut; a later one reads the answer."""
        assert self.pending is not None
        if "sent" not in self.pending:
            outage = step.to_outage(f"{exp}-o{len(result.outages) + 1}")
            self.store.log_event(exp, "outage_request", outage_id=outage.id, mode=outage.mode,
                                 max_duration=outage.max_duration)
            # Recorded before the task is sent: an interrupt or a timeout while the router is being cut must still
            # send the restore, which then either undoes the cut or cancels it before it happens.
            # wan_cut: whether the WAN was cut ("yes"), never was ("no"), or may have been ("maybe": no answer says)
            record = {"id": outage.id, "mode": outage.mode, "asked": outage.to_dict(), "start": time.time(),
                      "end": None, "cut": "requested", "wan_cut": "maybe", "deadman": "", "restore": None,
                      "confirmed": "not restored yet"}
            result.outages.append(record)
            self.open_outage = record
            self._send(tasks.router_outage.s(self.site.name, exp, outage.to_dict()), expires=self.task_timeout)
        record = result.outages[-1]
        outage = Outage.from_dict(record["asked"])
        try:
            res = self._answer()
            if res is None:
                return None
        except NotReached as exc:
            # the cut never got to the router: nothing to restore, no outage to draw, nothing to do by hand
            self.store.log_event(exp, "outage", ok=False, error=str(exc), reached=False)
            said = f"the router at {self.site.router.address if self.site.router else '?'} was not reached: the WAN was never cut"
            record.update(cut=f"not reached ({exc})", wan_cut="no", end=record["start"], restore="not needed",
                          confirmed=said)
            self.open_outage = None
            return StepResult(step.name, "outage", False, 0, f"{said} ({exc})", {"error": str(exc)})
        except StepFailed as exc:
            self.store.log_event(exp, "outage", ok=False, error=str(exc))
            record["cut"] = f"unknown ({exc})"
            return StepResult(step.name, "outage", False, 0, f"cut failed: {exc}", {"error": str(exc)})
        self.store.log_event(exp, "outage", ok=True, **res)
        record["cut"] = res.get("outcome") or "unknown (no answer)"
        record["wan_cut"] = ("yes" if record["cut"] in ("cut", "already-cut")
                             else "no" if record["cut"] in ("cancelled", "already-restored") else "maybe")
        record["deadman"] = res.get("deadman") or ""
        if res.get("t_cut"):
            record["start"] = res.get("t_cut_done") or res["t_cut"]
            record["asked_start"] = res["t_cut"]     # the WAN went down between this and `start`
        if res.get("outcome") not in ("cut", "already-cut"):
            return StepResult(step.name, "outage", False, 0, f"the router did not cut: {res.get('outcome')} "
                                                             f"({res.get('note', '')})", res)
        state, probe = WanState.from_dict(res.get("state")), res.get("probe")
        said = state.describe() if state else "no state"
        if state is None or not state.shows(outage.mode):
            return StepResult(step.name, "outage", False, 0, f"router state after the cut does not show it: {said}", res)
        if probe is not None and probe.get("reachable"):
            return StepResult(step.name, "outage", False, 0,
                              f"outage did not take effect: the provider is still reachable from the LAN ({probe.get('detail')})", res)
        return StepResult(step.name, "outage", True, 0,
                          f"router: {said}; dead-man: {record['deadman'] or 'none'}; "
                          f"LAN probe: {probe.get('detail') if probe else 'n/a'}", res)

    def _restore(self, exp: str, name: str, result: ExperimentResult) -> StepResult | None:
        """End the open outage: the first move sends the restore, a later one reads the answer."""
        record = self.open_outage
        if record is None:
            return StepResult(name, "restore", True, 0, "no outage open")
        assert self.pending is not None
        outage = Outage.from_dict(record["asked"])
        if "sent" not in self.pending:
            # No worker may start this restore after the dead-man has fired anyway; until then it is always worth running.
            expires = max(self.task_timeout, float(outage.max_duration))
            self._send(tasks.router_restore.s(self.site.name, exp, outage.to_dict()), expires=expires)
        try:
            res = self._answer()
            if res is None:
                return None
        except StepFailed as exc:
            self.store.log_event(exp, "restore", ok=False, error=str(exc))
            record["restore"] = f"failed ({exc})"
            record["confirmed"] = (f"NOT confirmed: {exc}; " +
                                   (f"the router's dead-man's switch restores it ({record['deadman']})" if record["deadman"]
                                    else "no dead-man's switch is armed: restore the WAN by hand"))
            return StepResult(name, "restore", False, 0, f"restore failed: {exc}", {"error": str(exc)})
        self.store.log_event(exp, "restore", ok=True, **res)
        record["restore"] = res.get("outcome") or "failed (no answer)"
        self.open_outage = None
        outcome, state = res.get("outcome"), WanState.from_dict(res.get("state"))
        record["router_state"] = state.to_dict() if state else {}
        if outcome == "cancelled-before-cut":
            record["end"], record["wan_cut"] = record["start"], "no"
            record["confirmed"] = "cancelled: the router never cut (the restore arrived first)"
        else:
            record["end"] = res.get("t_restore_done") or time.time()
            if res.get("t_restore"):
                record["asked_end"] = res["t_restore"]     # the WAN came back between this and `end`
            by = f" by the {res.get('by')}" if res.get("by") else ""
            record["confirmed"] = (f"restored{by}: {state.describe(with_outage=False) if state else 'no state'}"
                                   if not res.get("leftovers") else f"NOT fully restored: {'; '.join(res['leftovers'])}")
        if res.get("leftovers"):
            return StepResult(name, "restore", False, 0, f"router after restore: {'; '.join(res['leftovers'])}", res)
        probe = res.get("probe") or {}
        if probe.get("reachable") is False:
            return StepResult(name, "restore", False, 0, f"provider still unreachable after restore ({probe.get('detail')})", res)
        return StepResult(name, "restore", True, 0, f"{record['confirmed']}; LAN probe: {probe.get('detail', 'n/a')}", res)

    def _expect(self, exp: str, step: ExpectStep, result: ExperimentResult) -> StepResult | None:
        """Look once at where the phones work; done when all are on the server or `within` has passed."""
        assert self.pending is not None
        phones = self._phones(step.phones)
        reached: dict[str, float] = self.pending.setdefault("reached", {})   # MAC -> when first seen there
        rows = {r["mac"]: r for r in self.store.phones(self.site.name)}
        for p in phones:
            if p.mac not in reached and (rows.get(p.mac) or {}).get("state", {}).get("working_server") == step.server:
                reached[p.mac] = time.time()
        left = step.within - (time.time() - self.pending["started"])
        if len(reached) < len(phones) and left > 0:
            self.progress(f"{step.name}: {len(reached)}/{len(phones)} on server {step.server}, {left:.0f} s left")
            self.pause = min(self.pb.sample_interval, left)
            return None
        missing = [p.mac for p in phones if p.mac not in reached]
        detail = {"expected_server": step.server, "reached": reached, "measure": step.measure,
                  "missing": {m: (rows.get(m) or {}).get("state", {}).get("working_server") for m in missing}}
        self.store.log_event(exp, "expect", name=step.name, **detail)
        if missing:
            where = ", ".join(f"{m} on server {detail['missing'][m]}" for m in missing[:5])
            return StepResult(step.name, "expect", False, 0,
                              f"{len(missing)}/{values.plural(len(phones), 'phone')} not on server {step.server} within {step.within:g}s ({where})", detail)
        return StepResult(step.name, "expect", True, 0, f"{values.plural(len(phones), 'phone')} on server {step.server}",
                          detail)

    def _call(self, exp: str, step: CallStep) -> StepResult | None:
        """Dial (the first move sends it), then look for the phone's report of the call until `within` passes."""
        phone = next((p for p in self.site.phones if (step.from_phone and p.mac == step.from_phone.lower())
                      or (not step.from_phone and p.family.rest)), None)
        if phone is None:
            return StepResult(step.name, "call", False, 0, "no phone to call from")
        progress = self.pending
        assert progress is not None
        if "sent" not in progress:
            progress["t0"] = time.time()
            self._send(tasks.place_call.s(self.site.name, exp, phone.mac, step.call))
        if "dialled" not in progress:
            try:
                if self._answer() is None:
                    return None
            except StepFailed as exc:
                return StepResult(step.name, "call", False, 0, f"dial failed: {exc}", {"error": str(exc)})
            progress["dialled"] = time.time()
        t0 = progress["t0"]
        calls = [o for o in self.store.observations(exp, phone.mac) if o.get("kind") == "call" and o["t"] >= t0]
        left = step.within - (time.time() - progress["dialled"])
        if not calls and left > 0:
            self.progress(f"{step.name}: waiting for {phone.mac}'s report of the call, {left:.0f} s left")
            self.pause = min(self.pb.sample_interval, left)
            return None
        if not calls:
            return StepResult(step.name, "call", False, 0, f"no call report from {phone.mac} within {step.within:g}s")
        server = calls[0]["server"]
        detail = {"mac": phone.mac, "server": server, "observed": calls[0]}
        self.store.log_event(exp, "call", **detail)
        ok = server == step.expect_server
        seen_by = sorted({c.get("source", "?") for c in calls if c.get("server") == server})
        return StepResult(step.name, "call", ok, 0, f"call from {phone.mac} went to server {server} ({calls[0]['address']}; "
                          f"seen by {', '.join(seen_by)})"
                          + ("" if ok else f", expected server {step.expect_server}"), detail)

    # ------------------------------------------------------------------ verdicts
    def _verdicts(self, exp: str, result: ExperimentResult) -> None:
        """Gather the history and the predictions; `fleet.experiment.verdict` decides."""
        expects = [s for s in self.pb.steps if isinstance(s, ExpectStep)]
        expectations = [Expectation(s.name, s.server, s.within, s.measure) for s in expects]
        step_results = {s.name: s for s in result.steps}
        seen_by_step = {}
        for step in expects:
            sr = step_results.get(step.name)
            seen_by_step[step.name] = None if sr is None else Reached(sr.detail.get("reached") or {},
                                                                      sr.detail.get("missing") or {})
        cut = [o for o in result.outages if o.get("cut") in ("cut", "already-cut")]
        outage = OutageWindow(cut[0]["start"], cut[0].get("end"), cut[0].get("asked_start"), cut[0].get("asked_end")) \
            if cut else None
        # predictions follow what each phone really runs: the configuration a rollout last pushed, else the inventory's
        pushed = RolloutStore(self.store).last_pushed([p.mac for p in self.site.phones])
        selected = {step.name: {p.mac for p in self._phones(step.phones)} for step in expects}
        stored = {row["mac"]: row for row in self.store.phones(self.site.name)}   # what the phones reported
        missed_calls = inbound_step.missed_during_outage(result)
        for p in self.site.phones:
            params = pushed.get(p.mac) or self.inv.effective_params(self.site, p)
            obs = self.store.observations(exp, p.mac)
            family = self._family(p)
            pred = predicted_bounds(params, family, obs, outage, self._dns_ttl(params, family))
            facts = phone_facts(p, params, stored.get(p.mac))
            v = PhoneVerdict(mac=p.mac, model=p.model, predicted_failover_max_s=pred.failover_max_s,
                             predicted_recovery_max_s=pred.recovery_max_s, prediction_notes=pred.notes,
                             timeline=timeline(obs, self.initial.get(p.mac), result.started),
                             address=facts.address, extension=facts.extension, firmware=facts.firmware,
                             firmware_from=facts.firmware_from, bounds=pred.derivations)
            seen = {name: r for name, r in seen_by_step.items() if p.mac in selected[name]}
            result.phones.append(judge_phone(v, len(servers(params)), expectations, seen, obs, outage))
            if p.mac in missed_calls:      # expect: inbound_via_fallback during the outage (inbound_step)
                v.passed = False
                v.reasons.append(f"would miss calls during an outage: {missed_calls[p.mac]}")
            fallback = next((t for t in servers(params, 1, family) if t.index == 2), None)
            if fallback is not None:
                v.failover_behaviour = fallback_behaviour(obs, (self.initial.get(p.mac) or {}).get("servers"), outage,
                                                          fallback.expires)
