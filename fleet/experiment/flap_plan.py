"""A flapping WAN's plan: when each cut starts and ends, computed (jitter and all) before anything is cut.

A real WAN rarely fails once and cleanly; it flaps, and flapping is where registration churn, retry backoff and
failback timers go wrong. A `flap` step cuts and restores the WAN `cycles` times: each cycle is `down_s` of
outage, then `up_s` of WAN (the last cycle's up time included: the phones get it to come back before the next
step). With `jitter_s`, each down and up time moves by a uniform random amount in [-jitter_s, +jitter_s], drawn
from `random.Random(seed)`: the same playbook gives the same plan on every run and every host, so a failing run
can be replayed exactly. The plan is recorded in the experiment's event log and report before the first cut.

Safety: every cut arms the router's dead-man's switch with `max_duration` = ceil(its down time + margin), so a
controller killed at any moment (SIGKILL, a lost host) leaves a WAN that comes back by itself at most `margin`
seconds after that cut's planned end, which is never after the sequence's planned end plus the margin. A
controller killed during an up time leaves the WAN up: no cut is ever made without the controller that restores it.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

DURATION_STEP = 0.001   # plan times are rounded to the millisecond: the plan in the report is the plan that ran


@dataclass(frozen=True)
class PlannedCut:
    """One cycle: the WAN goes down at `start` for `down_s`, then stays up for `up_s` (offsets from the step's
    start, seconds). `max_duration` is the dead-man's switch the cut arms (whole seconds, the router's unit)."""
    index: int
    start: float
    down_s: float
    up_s: float
    max_duration: int

    @property
    def end(self) -> float:
        return round(self.start + self.down_s, 3)

    def to_dict(self) -> dict:
        return asdict(self) | {"end": self.end}


@dataclass(frozen=True)
class FlapPlan:
    mode: str
    cycles: tuple[PlannedCut, ...]
    margin_s: float
    seed: int | None

    @property
    def duration_s(self) -> float:
        """From the first cut to the end of the last up time."""
        last = self.cycles[-1]
        return round(last.end + last.up_s, 3)

    @property
    def deadman_deadline_s(self) -> float:
        """The latest moment (offset) any of the plan's dead-man's switches can fire: the last cut's planned end
        plus the margin, rounded up as the router's whole seconds round it."""
        return max(c.start + c.max_duration for c in self.cycles)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "seed": self.seed, "margin_s": self.margin_s, "duration_s": self.duration_s,
                "deadman_deadline_s": self.deadman_deadline_s, "cycles": [c.to_dict() for c in self.cycles]}


def jitter_problem(down_s: float, up_s: float, jitter_s: float) -> str | None:
    """Why a jitter cannot apply to these times (None: it can): a down or up time could reach zero or below."""
    if jitter_s and jitter_s >= min(down_s, up_s):
        return (f"jitter_s {jitter_s:g} must be below both down_s ({down_s:g}) and up_s ({up_s:g}): "
                f"a cut or an up time could otherwise last zero seconds or less")
    return None


def plan(mode: str, cycles: int, down_s: float, up_s: float, jitter_s: float = 0.0, seed: int | None = None,
         margin_s: float = 10.0) -> FlapPlan:
    """The flap's cuts, offsets from the step's start. Raises ValueError when the jitter does not fit
    (`jitter_problem`); the playbook checks the same before this is ever called."""
    problem = jitter_problem(down_s, up_s, jitter_s)
    if problem:
        raise ValueError(problem)
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(cycles):
        down = round(down_s + (rng.uniform(-jitter_s, jitter_s) if jitter_s else 0.0), 3)
        up = round(up_s + (rng.uniform(-jitter_s, jitter_s) if jitter_s else 0.0), 3)
        out.append(PlannedCut(i + 1, round(t, 3), down, up, math.ceil(down + margin_s)))
        t += down + up
    return FlapPlan(mode, tuple(out), margin_s, seed)
