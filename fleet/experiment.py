"""Run an experiment playbook against one site: outages through the router, verdicts from observations.

Safety comes first: a dead-man's switch is armed on the router before every
cut, the cut is proven from the router's own state and from a LAN-side probe
(an outage that did not take effect fails the run instead of passing it), and
the WAN is restored at the end, on error and on Ctrl-C. The site is held under
an exclusive lease for the whole run, and every operation goes into the
experiment's append-only event log.
"""
from __future__ import annotations

import secrets
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .celeryapp import app as celery_app
from .celeryapp import site_queue
from .inventory import Inventory, Phone, Site
from .playbook import CallStep, ExpectStep, ExperimentPlaybook, OutageStep, RestoreStep, WaitStep
from .predict import failover_max, recovery_max, servers
from .store import RolloutStore, Store

TASK_TIMEOUT = 60.0


@dataclass
class StepResult:
    name: str
    kind: str
    passed: bool
    elapsed_s: float
    message: str = ""
    detail: dict = field(default_factory=dict)


@dataclass
class PhoneVerdict:
    mac: str
    model: str
    passed: bool = True
    failover_s: float | None = None
    recovery_s: float | None = None
    predicted_failover_max_s: float | None = None
    predicted_recovery_max_s: float | None = None
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)     # one per expectation, for JUnit
    timeline: list[dict] = field(default_factory=list)


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


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50": _percentile(values, 50), "p95": _percentile(values, 95),
            "max": max(values) if values else None}


class ExperimentRunner:
    def __init__(self, playbook: ExperimentPlaybook, inventory: Inventory, store: Store,
                 say: Callable[[str], None] = lambda s: None, task_timeout: float = TASK_TIMEOUT,
                 lease_holder: str | None = None) -> None:
        self.pb = playbook
        self.inv = inventory
        self.store = store
        self.say = say
        self.site: Site = inventory.site(playbook.site)
        self.queue = site_queue(self.site.name)
        self.task_timeout = task_timeout
        self.open_outage: dict | None = None
        self._stop_renew = threading.Event()
        self.lease_holder = lease_holder   # a rollout running this as its failover drill already holds the site

    # ------------------------------------------------------------------ helpers
    def _task(self, name: str, *args) -> dict:
        result = celery_app.send_task(name, args=list(args), queue=self.queue)
        try:
            return result.get(timeout=self.task_timeout, propagate=True)
        except Exception as exc:  # timeouts, worker lost: surfaced as a step failure with a reason
            return {"ok": False, "error": f"{name}: {type(exc).__name__}: {exc}"[:300]}

    def _renew(self, exp: str) -> None:
        while not self._stop_renew.wait(5):
            self.store.renew_lease(self.site.name, exp)

    def _phones(self, selector) -> list[Phone]:
        phones = self.site.phones
        if selector.macs:
            wanted = {m.lower().replace(":", "") for m in selector.macs}
            phones = [p for p in phones if p.mac in wanted]
        if selector.models:
            phones = [p for p in phones if p.model in selector.models]
        return phones

    # ------------------------------------------------------------------ run
    def run(self) -> ExperimentResult:
        exp = self.store.new_experiment(self.site.name, self.pb.name)
        holder = self.lease_holder or exp
        self.store.acquire_lease(self.site.name, holder)
        result = ExperimentResult(id=exp, playbook=self.pb.name, site=self.site.name, started=time.time())
        renewer = threading.Thread(target=self._renew, args=(holder,), daemon=True)
        renewer.start()
        self.store.register_site(self.inv, self.site)
        self.store.set_observing(self.site.name, exp)
        # where each phone stood when the run began: the first lane segment of its timeline
        self.initial = {r["mac"]: r["state"] for r in self.store.phones(self.site.name)}
        self.store.log_event(exp, "start", playbook=self.pb.name, site=self.site.name,
                             initial={m: s.get("working_server") for m, s in self.initial.items()})
        self.say(f"experiment {exp}: {self.pb.name} on site {self.site.name} ({len(self.site.phones)} phones)")
        try:
            for step in self.pb.steps:
                t0 = time.monotonic()
                res = self._run_step(exp, step, result)
                res.elapsed_s = round(time.monotonic() - t0, 3)
                result.steps.append(res)
                self.store.log_event(exp, "step", name=res.name, passed=res.passed, message=res.message)
                self.say(f"{'PASS' if res.passed else 'FAIL'} {res.name} ({res.elapsed_s:.1f}s){': ' + res.message if res.message else ''}")
                if not res.passed and res.kind == "outage":
                    break   # a fault that did not take effect makes the rest meaningless
        except KeyboardInterrupt:
            result.errors.append("interrupted (Ctrl-C): WAN restored, run abandoned")
            self.store.log_event(exp, "interrupted")
        finally:
            if self.open_outage is not None:
                self.say("restoring the WAN (cleanup)")
                res = self._restore(exp, "cleanup", result)
                if not res.passed:
                    result.errors.append(f"cleanup restore failed: {res.message}; the router's dead-man's switch restores it")
            self.store.set_observing(self.site.name, None)
            self._stop_renew.set()
            if self.lease_holder is None:
                self.store.release_lease(self.site.name, holder)
        time.sleep(0.2)  # observations already in flight reach the store
        self._verdicts(exp, result)
        result.finished = time.time()
        result.passed = (not result.errors and all(s.passed for s in result.steps)
                         and all(p.passed for p in result.phones))
        self.store.log_event(exp, "finish", passed=result.passed)
        return result

    def _run_step(self, exp: str, step, result: ExperimentResult) -> StepResult:
        if isinstance(step, OutageStep):
            return self._outage(exp, step, result)
        if isinstance(step, RestoreStep):
            return self._restore(exp, step.name, result)
        if isinstance(step, ExpectStep):
            return self._expect(exp, step, result)
        if isinstance(step, CallStep):
            return self._call(exp, step)
        if isinstance(step, WaitStep):
            time.sleep(step.wait)
            return StepResult(step.name, "wait", True, 0.0)
        raise TypeError(f"unknown step {step!r}")

    def _outage(self, exp: str, step: OutageStep, result: ExperimentResult) -> StepResult:
        self.store.log_event(exp, "outage_request", mode=step.outage, max_duration=step.max_duration)
        # Marked open before the task is sent: an interrupt while the router is being cut must still restore it.
        self.open_outage = {"mode": step.outage, "deadman": None, "t_cut": time.time(), "outage_id": secrets.token_hex(8)}
        res = self._task("fleet.router_outage", self.site.name, exp, self.open_outage["outage_id"], step.outage,
                         step.max_duration, step.loss, step.delay_ms)
        if res.get("deadman"):
            self.open_outage["deadman"] = res["deadman"]
        if res.get("t_cut"):
            self.open_outage["t_cut"] = res.get("t_cut_done") or res["t_cut"]
            result.outages.append({"mode": step.outage, "start": self.open_outage["t_cut"], "end": None})
        self.store.log_event(exp, "outage", **{k: v for k, v in res.items()})
        if not res.get("ok"):
            return StepResult(step.name, "outage", False, 0, f"cut failed: {res.get('error')}", res)
        state, probe = res.get("router_state") or {}, res.get("probe")
        expected = {"link-down": not state.get("link_up", True), "drop": state.get("dropping"),
                    "dns-fail": state.get("dns_blocked"), "degrade": state.get("netem")}[step.outage]
        if not expected:
            return StepResult(step.name, "outage", False, 0, f"router state after the cut does not show it: {state}", res)
        if probe is not None and probe.get("reachable"):
            return StepResult(step.name, "outage", False, 0,
                              f"outage did not take effect: the provider is still reachable from the LAN ({probe.get('detail')})", res)
        return StepResult(step.name, "outage", True, 0, f"router {state}; LAN probe: {probe.get('detail') if probe else 'n/a'}", res)

    def _restore(self, exp: str, name: str, result: ExperimentResult) -> StepResult:
        outage = self.open_outage or {}
        res = self._task("fleet.router_restore", self.site.name, exp, outage.get("outage_id") or secrets.token_hex(8),
                         outage.get("mode", "link-down"))
        self.store.log_event(exp, "restore", **res)
        if res.get("ok"):
            self.open_outage = None
            if result.outages and result.outages[-1]["end"] is None:
                result.outages[-1]["end"] = res.get("t_restore_done") or time.time()
        if not res.get("ok"):
            return StepResult(name, "restore", False, 0, f"restore failed: {res.get('error')}", res)
        probe = res.get("probe") or {}
        if probe.get("reachable") is False:
            return StepResult(name, "restore", False, 0, f"provider still unreachable after restore ({probe.get('detail')})", res)
        return StepResult(name, "restore", True, 0, f"LAN probe: {probe.get('detail', 'n/a')}", res)

    def _expect(self, exp: str, step: ExpectStep, result: ExperimentResult) -> StepResult:
        phones = self._phones(step.phones)
        deadline = time.monotonic() + step.within
        reached: dict[str, float] = {}
        rows: dict[str, dict] = {}
        while True:
            rows = {r["mac"]: r for r in self.store.phones(self.site.name)}
            for p in phones:
                if p.mac not in reached and (rows.get(p.mac) or {}).get("state", {}).get("working_server") == step.server:
                    reached[p.mac] = time.time()
            if len(reached) == len(phones) or time.monotonic() >= deadline:
                break
            time.sleep(self.pb.sample_interval)
        missing = [p.mac for p in phones if p.mac not in reached]
        detail = {"expected_server": step.server, "reached": reached, "measure": step.measure,
                  "missing": {m: (rows.get(m) or {}).get("state", {}).get("working_server") for m in missing}}
        self.store.log_event(exp, "expect", name=step.name, **detail)
        if missing:
            where = ", ".join(f"{m} on server {detail['missing'][m]}" for m in missing[:5])
            return StepResult(step.name, "expect", False, 0,
                              f"{len(missing)}/{len(phones)} phones not on server {step.server} within {step.within:g}s ({where})", detail)
        return StepResult(step.name, "expect", True, 0, f"{len(phones)} phones on server {step.server}", detail)

    def _call(self, exp: str, step: CallStep) -> StepResult:
        phone = next((p for p in self.site.phones if (step.from_phone and p.mac == step.from_phone.lower())
                      or (not step.from_phone and p.has_rest)), None)
        if phone is None:
            return StepResult(step.name, "call", False, 0, "no phone to call from")
        t0 = time.time()
        res = self._task("fleet.place_call", self.site.name, exp, phone.mac, step.call)
        if not res.get("ok"):
            return StepResult(step.name, "call", False, 0, f"dial failed: {res.get('error')}", res)
        deadline = time.monotonic() + step.within
        while time.monotonic() < deadline:
            calls = [o for o in self.store.observations(exp, phone.mac) if o.get("kind") == "call" and o["t"] >= t0]
            if calls:
                server = calls[0]["server"]
                detail = {"mac": phone.mac, "server": server, "observed": calls[0]}
                self.store.log_event(exp, "call", **detail)
                ok = server == step.expect_server
                return StepResult(step.name, "call", ok, 0,
                                  f"call from {phone.mac} went to server {server} ({calls[0]['address']})"
                                  + ("" if ok else f", expected server {step.expect_server}"), detail)
            time.sleep(self.pb.sample_interval)
        return StepResult(step.name, "call", False, 0, f"no call report from {phone.mac} within {step.within:g}s")

    # ------------------------------------------------------------------ verdicts
    def _verdicts(self, exp: str, result: ExperimentResult) -> None:
        expects = [s for s in self.pb.steps if isinstance(s, ExpectStep)]
        step_results = {s.name: s for s in result.steps}
        outage = result.outages[0] if result.outages else None
        # predictions follow what each phone really runs: the configuration a rollout last pushed, else the inventory's
        pushed = RolloutStore(self.store).last_pushed([p.mac for p in self.site.phones])
        selected = {step.name: {p.mac for p in self._phones(step.phones)} for step in expects}
        for p in self.site.phones:
            params = pushed.get(p.mac) or self.inv.effective_params(self.site, p)
            v = PhoneVerdict(mac=p.mac, model=p.model, predicted_failover_max_s=failover_max(params),
                             predicted_recovery_max_s=recovery_max(params))
            obs = self.store.observations(exp, p.mac)
            v.timeline = [{"t": round(o["t"], 3), "working_server": o.get("working_server"), "source": o.get("source"),
                           "server": o.get("server"), "state": o.get("state"), "kind": o.get("kind", "registration")}
                          for o in obs]
            first = self.initial.get(p.mac) or {}
            if first.get("observed_at"):
                v.timeline.insert(0, {"t": round(result.started, 3), "working_server": first.get("working_server"),
                                      "source": "state at start", "server": None, "state": None, "kind": "registration"})
            if len(servers(params)) < 2:
                v.passed = False
                v.reasons.append("no fallback server configured (reg.1.server.2.address is empty): it cannot fail over")
            for step in expects:
                if p.mac not in selected[step.name]:
                    continue
                sr = step_results.get(step.name)
                if sr is None:
                    v.checks.append({"name": step.name, "passed": False, "message": "not run"})
                    v.passed = False
                    continue
                reached = (sr.detail.get("reached") or {}).get(p.mac)
                ok = reached is not None
                message = "" if ok else (f"never moved to server {step.server} within {step.within:g}s; "
                                         f"working server was {sr.detail.get('missing', {}).get(p.mac)}")
                if ok and outage and step.measure in ("failover", "recovery"):
                    ref = outage["start"] if step.measure == "failover" else outage.get("end")
                    if ref is not None:
                        t = self._first_change(obs, step.server, ref)
                        measured = round((t if t is not None else reached) - ref, 3)
                        if step.measure == "failover":
                            v.failover_s = measured
                            bound = v.predicted_failover_max_s
                        else:
                            v.recovery_s = measured
                            bound = v.predicted_recovery_max_s
                        if bound is not None and measured > bound:
                            message = f"{step.measure} took {measured:.1f}s, over the {bound:.1f}s its configuration predicts"
                            ok = False
                if not ok:
                    v.passed = False
                    v.reasons.append(f"{step.name}: {message}")
                v.checks.append({"name": step.name, "passed": ok, "message": message})
            result.phones.append(v)

    @staticmethod
    def _first_change(obs: list[dict], server: int, after: float) -> float | None:
        for o in obs:
            if o["t"] >= after and o.get("kind", "registration") == "registration" and o.get("working_server") == server:
                return o["t"]
        return None
