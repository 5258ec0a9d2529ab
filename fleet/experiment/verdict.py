"""Experiment verdicts from an event history: pure functions, no Redis, no clock.

The runner gathers what happened (which phones reached which server when,
the outage window the router confirmed, each phone's observations) and what
each phone's configuration predicts; this module alone decides what passed.
Keeping it pure is what lets its edge cases be unit-tested: a phone that never
reports, an outage that was cancelled before it cut, a restore that never
happened, a measured time over its predicted bound.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from fleet.phoneconf import predict


@dataclass
class PhoneVerdict:
    mac: str
    model: str
    passed: bool = True
    failover_s: float | None = None
    recovery_s: float | None = None
    predicted_failover_max_s: float | None = None
    predicted_recovery_max_s: float | None = None
    # where the evidence only bounds the moment (a lapsed binding, an unanswered DNS lookup): [earliest, latest] s
    failover_interval_s: list[float] | None = None
    recovery_interval_s: list[float] | None = None
    judgement: dict[str, str] = field(default_factory=dict)   # measure -> within bound / over bound / undetermined: ...
    prediction_notes: list[str] = field(default_factory=list)   # why a bound is missing (fleet.phoneconf.predict says)
    reasons: list[str] = field(default_factory=list)
    # how the phone used its fallback (server 2) around the cut: fallback_behaviour() says what each value means
    failover_behaviour: str | None = None
    checks: list[dict] = field(default_factory=list)     # one per expectation, for JUnit
    timeline: list[dict] = field(default_factory=list)
    # who the phone is, for lining the report up with PBX and router logs (None: not known)
    address: str | None = None           # its IP address (the inventory's)
    extension: str | None = None         # line 1's user (reg.1.address before any @)
    firmware: str | None = None          # as the phone reported it (collector, probe), else the inventory's
    firmware_from: str | None = None     # "phone" or "inventory"
    # each predicted bound's derivation (fleet.phoneconf.predict.Derivation.to_dict), by measure
    bounds: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Expectation:
    """An `expect` step as the verdict needs it."""
    name: str
    server: int
    within: float
    measure: str | None = None          # "failover", "recovery" or None


@dataclass(frozen=True)
class Reached:
    """What an `expect` step saw: when each phone reached the server, and where the others were at the deadline."""
    at: dict[str, float]
    missing: dict[str, int | None]


@dataclass(frozen=True)
class OutageWindow:
    start: float
    end: float | None                    # None: never confirmed restored
    # when the cut and the restore were asked for: the WAN changed between each and the router's answer (start,
    # end), and a phone quick to move may have moved in between (a link-down restore answers once its routes are
    # back); such a move is found from here on and counts as 0 s (None: not known, the answers only)
    asked_start: float | None = None
    asked_end: float | None = None


@dataclass(frozen=True)
class Predicted:
    failover_max_s: float | None
    recovery_max_s: float | None
    notes: list[str]
    derivations: dict[str, dict] = field(default_factory=dict)   # measure -> Derivation.to_dict() (the report's)


def predicted_bounds(params: dict[str, str], family: str | None, observations: list[dict],
                     outage: OutageWindow | None, dns_ttl: float | None = None) -> Predicted:
    """A phone's predicted bounds for this run: its family's retry model and failback mode, the expiry each
    server granted (from the observations before the cut) rather than only the configured one, and the
    outage's length (it bounds how far a backoff can have grown)."""
    cut = outage.start if outage else None
    # the last grant before the cut; else the one the primary gave when it came back (a server grants alike)
    granted = predict.granted_expiry(observations, 1, before=cut) or predict.granted_expiry(observations, 1)
    fb_granted = predict.granted_expiry(observations, 2)
    outage_s = (outage.end - outage.start) if outage and outage.end is not None else None
    notes = []
    derivations = {}
    how = predict.failover_derivation(params, family=family, granted=granted)
    failover = None if how is None else how.seconds
    if how is not None:
        derivations["failover"] = how.to_dict()
    if failover is None:
        problem = predict.failover_problem(params, family=family)
        if problem:
            notes.append(f"failover: {problem}")
    rec = predict.recovery_bound(params, family=family, dns_ttl=dns_ttl, outage_s=outage_s,
                                 fallback_granted=fb_granted)
    if rec.seconds is None and rec.reason:
        notes.append(f"recovery: {rec.reason}")
    if rec.derivation is not None:
        derivations["recovery"] = rec.derivation.to_dict()
    return Predicted(failover, rec.seconds, notes, derivations)


CONCURRENT = "concurrent"      # registered with the fallback before the cut (TB 5844's reading of reRegisterOn=1)
ON_FAILURE = "on-failure"      # first registered with it only after the cut (the other reading)
NO_FALLBACK = "none"           # never registered with it in the run
# A fallback a phone does not register with is fine for a phone that uses it only once server 1 fails: what tells
# the two readings apart is whether the phone registered there while server 1 still worked.


def fallback_behaviour(observations: list[dict], initial_servers: dict | None, outage: OutageWindow | None,
                       fallback_expires: float, server: int = 2) -> str | None:
    """Which reading of failOver.reRegisterOn=1 the phone followed, from what it sent (None: no cut to judge by).

    Evidence of a REGISTER the phone sent: a `registered` observation of `server` on registration 1 from any
    source but the gateway's bindings (a binding left from an earlier failover outlives the phone's interest in
    it), before the cut (concurrent) or after it (on-failure); the state at the run's start counts as before the
    cut while that registration can still be valid (its time plus the fallback's expiry is after the cut)."""
    if outage is None:
        return None

    def sent(o: dict) -> bool:
        return (o.get("server") == server and o.get("reg", 1) == 1 and o.get("state") == "registered"
                and o.get("kind", "registration") == "registration" and o.get("source") != "gateway")

    start = (initial_servers or {}).get(str(server)) or (initial_servers or {}).get(server) or {}
    if sent(start | {"server": server}) and float(start.get("t") or 0) + fallback_expires > outage.start:
        return CONCURRENT
    if any(sent(o) and o["t"] < outage.start for o in observations):
        return CONCURRENT
    if any(sent(o) and o["t"] >= outage.start for o in observations) or first_change(observations, server, outage.start):
        return ON_FAILURE
    return NO_FALLBACK


def first_change(observations: list[dict], server: int, after: float) -> float | None:
    """The first registration observation at or after `after` that shows `server` as the working server."""
    for o in observations:
        if o["t"] >= after and o.get("kind", "registration") == "registration" and o.get("working_server") == server:
            return o["t"]
    return None


def change_interval(observations: list[dict], server: int, after: float) -> tuple[float, float] | None:
    """When `server` became the working server, at or after `after`, as (earliest, latest) wall times.

    The first observation showing it working gives the latest moment; the earliest is that observation's own
    `earliest` where it only bounds its moment (a lapsed binding, an unanswered DNS lookup). Neither can be
    before the server's own registration seen so far: a server is not working before it is registered, so a
    loss stamped early (a DNS lookup) never makes the change look earlier than the registration that made it."""
    registered_at: float | None = None     # since when `server` has been registered without a break (refreshes
    for o in observations:                 # of a standing registration do not move it)
        if o.get("kind", "registration") != "registration":
            continue
        if o.get("server") == server:
            if o.get("state") != "registered":
                registered_at = None
            elif registered_at is None:
                registered_at = o["t"]
        if o["t"] >= after and o.get("working_server") == server:
            latest = o["t"] if registered_at is None else max(o["t"], registered_at)
            earliest = o["t"] if o.get("earliest") is None else min(o["earliest"], o["t"])
            if registered_at is not None:
                earliest = max(earliest, registered_at)
            return min(earliest, latest), latest
    return None


def caused_change(observations: list[dict], server: int, answered: float, asked: float | None = None
                  ) -> tuple[float, float] | None:
    """When `server` became the working server because of a cut or restore the router answered at `answered`
    (asked for at `asked`), as (earliest, latest) wall times, neither before `answered`; None when unseen.

    The WAN changed somewhere between the request and the answer, and a phone quick to move may have moved in
    between (a link-down restore answers once its routes are back): such a move is searched for from the request
    on and counts as at the answer (0 s). Searched from the answer only, the phone's next refresh was taken for
    its move."""
    found = change_interval(observations, server, answered if asked is None else min(asked, answered))
    return None if found is None else (max(found[0], answered), max(found[1], answered))


def judge_measure(measure: str, earliest_s: float, latest_s: float, bound: float | None) -> tuple[bool, str, str]:
    """(passed, judgement, message) for a measured time known to lie in [earliest_s, latest_s]. A phone fails only
    when even the earliest moment the evidence allows is over its bound; when the bound falls inside the interval
    the evidence cannot say, and the phone is not failed on a guess."""
    if bound is None:
        return True, "", ""
    if latest_s <= bound:
        return True, "within bound", ""
    if earliest_s > bound:
        took = f"{latest_s:.1f}s" if earliest_s == latest_s else f"at least {earliest_s:.1f}s (between {earliest_s:.1f} and {latest_s:.1f}s)"
        return False, "over bound", f"{measure} took {took}, over the {bound:.1f}s its configuration predicts"
    late = latest_s - earliest_s
    return True, f"undetermined: evidence late by up to {late:.1f} s", (
        f"{measure} between {earliest_s:.1f} and {latest_s:.1f}s, the {bound:.1f}s bound inside: undetermined: "
        f"evidence late by up to {late:.1f} s")


def timeline(observations: list[dict], initial: dict | None, started: float) -> list[dict]:
    """The phone's lane for the report: its state when the run began, then every observation of its
    registration 1 (the lane is that line's: another line's servers are not its servers)."""
    lane = [{"t": round(o["t"], 3), "working_server": o.get("working_server"), "source": o.get("source"),
             "server": o.get("server"), "state": o.get("state"), "kind": o.get("kind", "registration"),
             **{k: o[k] for k in ("code", "expires") if o.get(k) is not None}}
            for o in observations if o.get("reg", 1) == 1]
    if initial and initial.get("observed_at"):
        lane.insert(0, {"t": round(started, 3), "working_server": initial.get("working_server"),
                        "source": "state at start", "server": None, "state": None, "kind": "registration"})
    return lane


def judge_phone(verdict: PhoneVerdict, configured_servers: int, expectations: list[Expectation],
                seen: dict[str, Reached | None], observations: list[dict], outage: OutageWindow | None) -> PhoneVerdict:
    """Fill in `verdict` for one phone. `seen` maps each expectation that selected this phone to what its step saw
    (None: the step never ran)."""
    if configured_servers < 2:
        verdict.passed = False
        verdict.reasons.append("no fallback server configured (reg.1.server.2.address is empty): it cannot fail over")
    for exp in expectations:
        if exp.name not in seen:
            continue
        step = seen[exp.name]
        if step is None:
            verdict.checks.append({"name": exp.name, "passed": False, "message": "not run"})
            verdict.passed = False
            continue
        reached = step.at.get(verdict.mac)
        ok = reached is not None
        message = "" if ok else (f"never moved to server {exp.server} within {exp.within:g}s; "
                                 f"working server was {step.missing.get(verdict.mac)}")
        if exp.measure in ("failover", "recovery"):
            bound = verdict.predicted_failover_max_s if exp.measure == "failover" else verdict.predicted_recovery_max_s
            notes = [n for n in verdict.prediction_notes if n.startswith(exp.measure + ":")]
            if bound is None and notes:
                # no bound to hold the phone to: say why (e.g. duration 0 never fails back), pass or fail
                message = "; ".join(filter(None, [message, "no predicted bound (" + notes[0].split(":", 1)[1].strip() + ")"]))
        if ok and outage is not None and exp.measure in ("failover", "recovery"):
            ref = outage.start if exp.measure == "failover" else outage.end
            asked = outage.asked_start if exp.measure == "failover" else outage.asked_end
            if ref is not None:
                found = caused_change(observations, exp.server, ref, asked)
                # the move the outage (or the restore) caused is not before it
                lo, hi = found if found is not None else (max(reached, ref), max(reached, ref))
                earliest_s, latest_s = round(lo - ref, 3), round(hi - ref, 3)
                interval = [earliest_s, latest_s] if earliest_s < latest_s else None
                if exp.measure == "failover":
                    verdict.failover_s, verdict.failover_interval_s = latest_s, interval
                    bound = verdict.predicted_failover_max_s
                else:
                    verdict.recovery_s, verdict.recovery_interval_s = latest_s, interval
                    bound = verdict.predicted_recovery_max_s
                ok, judgement, said = judge_measure(exp.measure, earliest_s, latest_s, bound)
                if judgement:
                    verdict.judgement[exp.measure] = judgement
                if said:
                    message = "; ".join(filter(None, [message, said])) if ok else said
        if not ok:
            verdict.passed = False
            why = [n.split(":", 1)[1].strip() for n in verdict.prediction_notes if n.startswith("failover:")]
            if exp.measure == "failover" and why:
                # the configuration says why it could not fail over: that first, not as a missing bound
                message = f"{why[0]}; " + message.replace(f"; no predicted bound ({why[0]})", "")
            verdict.reasons.append(f"{exp.name}: {message}")
        verdict.checks.append({"name": exp.name, "passed": ok, "message": message})
    return verdict


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else None}
