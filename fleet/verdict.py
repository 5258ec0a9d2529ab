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


def first_change(observations: list[dict], server: int, after: float) -> float | None:
    """The first registration observation at or after `after` that shows `server` as the working server."""
    for o in observations:
        if o["t"] >= after and o.get("kind", "registration") == "registration" and o.get("working_server") == server:
            return o["t"]
    return None


def timeline(observations: list[dict], initial: dict | None, started: float) -> list[dict]:
    """The phone's lane for the report: its state when the run began, then every observation."""
    lane = [{"t": round(o["t"], 3), "working_server": o.get("working_server"), "source": o.get("source"),
             "server": o.get("server"), "state": o.get("state"), "kind": o.get("kind", "registration"),
             **{k: o[k] for k in ("code", "expires") if o.get(k) is not None}}
            for o in observations]
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
        if ok and outage is not None and exp.measure in ("failover", "recovery"):
            ref = outage.start if exp.measure == "failover" else outage.end
            if ref is not None:
                t = first_change(observations, exp.server, ref)
                measured = round((t if t is not None else reached) - ref, 3)
                if exp.measure == "failover":
                    verdict.failover_s, bound = measured, verdict.predicted_failover_max_s
                else:
                    verdict.recovery_s, bound = measured, verdict.predicted_recovery_max_s
                if bound is not None and measured > bound:
                    message = f"{exp.measure} took {measured:.1f}s, over the {bound:.1f}s its configuration predicts"
                    ok = False
        if not ok:
            verdict.passed = False
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
