"""A `flap` step's moves: cut, hold, restore, hold, `cycles` times, through the runner's own outage moves.

Each cut is an ordinary outage of the run (its own id, its own dead-man's switch, its own record in the report's
outages, drawn on the timeline): the runner's `_outage` and `_restore` do the router work, so a flap gets every
safety an outage step has (the restore mark, a cancelled late cut, the cleanup's restore on an error, a signal or a
lost lease). Here is only the order and the clock. Like every step it never blocks: each move looks at where the
flap is and returns None while it is under way (`fleet.experiment.runner.advance`), and the state it keeps is
plain data in the runner's `pending` (a rollout's drill keeps it in Redis between ticks).

The times run from what the router confirmed, not from the plan's offsets: a cut that took 0.3 s to confirm
holds the WAN down `down_s` from the moment it really went down, and the next cut comes `up_s` after the restore
really finished. The plan (fleet.experiment.flap_plan) is recorded before the first cut; the report lists both.
"""
from __future__ import annotations

import time

from fleet.experiment.failures import StepFailed
from fleet.experiment.playbook import FlapStep, OutageStep

WAIT_CUT, CUTTING, DOWN, RESTORING, UP = "wait-cut", "cutting", "down", "restoring", "up"
POLL_S = 0.25     # how often a waiting flap looks again (a cut's time is the router's, not this poll's)


def _sub_move(runner, flap: dict, move):
    """Run one of the runner's outage moves with the flap's own sub-progress as the step's progress (they keep
    the task they sent in `pending`), then put the flap's back."""
    own = runner.pending
    runner.pending = flap["sub"]
    try:
        return move()
    finally:
        runner.pending = own


def advance(runner, exp: str, step: FlapStep, result) -> tuple[bool, str, dict] | None:
    """One move of the flap: (passed, message, detail) once done or failed (the runner makes its StepResult),
    None while under way."""
    progress = runner.pending
    flap = progress.get("flap")
    if flap is None:
        plan = step.flap.plan()
        record = {"step": step.name, "plan": plan.to_dict(), "started": progress["started"], "cuts": [],
                  "finished": None, "completed": False}
        result.flaps.append(record)
        runner.store.log_event(exp, "flap_plan", name=step.name, **plan.to_dict())
        runner.say(f"{step.name}: {len(plan.cycles)} {plan.mode} cut(s) planned over {plan.duration_s:.1f} s: " + "; ".join(
            f"+{c.start:.1f} s down {c.down_s:.1f} s (dead-man {c.max_duration} s)" for c in plan.cycles))
        flap = progress["flap"] = {"cycle": 0, "phase": WAIT_CUT, "due": progress["started"], "sub": None,
                                   "record": len(result.flaps) - 1}
    record = result.flaps[flap["record"]]
    cycles = record["plan"]["cycles"]
    n = len(cycles)
    while True:
        now = time.time()
        cycle = cycles[flap["cycle"]]
        phase = flap["phase"]
        if phase in (WAIT_CUT, DOWN, UP) and now < flap["due"]:
            left = flap["due"] - now
            what = {WAIT_CUT: "next cut", DOWN: "WAN down", UP: "WAN up"}[phase]
            runner.progress(f"{step.name}: cycle {cycle['index']}/{n}, {what}, {left:.0f} s left")
            runner.pause = min(left, POLL_S)
            return None
        if phase == WAIT_CUT:
            flap.update(phase=CUTTING, sub={"started": now})
            continue
        if phase == CUTTING:
            cut = OutageStep(name=f"{step.name} cut {cycle['index']}", outage=step.flap.mode,
                             max_duration=cycle["max_duration"], loss=step.flap.loss, delay_ms=step.flap.delay_ms,
                             rate_kbit=step.flap.rate_kbit)
            res = _sub_move(runner, flap, lambda: runner._outage(exp, cut, result))
            outage = result.outages[-1]
            if not record["cuts"] or record["cuts"][-1]["index"] != cycle["index"]:
                # listed from the moment it is asked for: a run stopped while the router cuts still shows this cut
                # (its end is the cleanup's restore, filled in by flap_verdict.sync_cuts)
                record["cuts"].append({"index": cycle["index"], "outage_id": outage["id"], "start": None, "end": None,
                                       "deadman": "", "max_duration": cycle["max_duration"]})
            if res is None:
                return None
            record["cuts"][-1].update(start=outage["start"], deadman=outage.get("deadman") or "")
            if not res.passed:
                return _failed(record, f"cut {cycle['index']}/{n}: {res.message}")
            flap.update(phase=DOWN, due=float(outage["start"]) + cycle["down_s"], sub=None)
            continue
        if phase == DOWN:
            flap.update(phase=RESTORING, sub={"started": now})
            continue
        if phase == RESTORING:
            try:
                res = _sub_move(runner, flap, lambda: runner._restore(exp, f"{step.name} restore {cycle['index']}",
                                                                      result))
            except StepFailed as exc:    # the runner's restore catches its own; a guard for any other
                return _failed(record, f"restore {cycle['index']}/{n}: {exc}")
            if res is None:
                return None
            outage = result.outages[-1]
            record["cuts"][-1]["end"] = outage.get("end")
            if not res.passed:
                return _failed(record, f"restore {cycle['index']}/{n}: {res.message}")
            flap.update(phase=UP, due=float(outage.get("end") or now) + cycle["up_s"], sub=None)
            continue
        # UP, and its time has passed
        if flap["cycle"] + 1 < n:
            flap.update(cycle=flap["cycle"] + 1, phase=WAIT_CUT, due=now)
            continue
        record.update(finished=now, completed=True)
        runner.store.log_event(exp, "flap_done", name=step.name, cuts=record["cuts"])
        down = sum((c["end"] or c["start"]) - c["start"] for c in record["cuts"])
        armed = sum(1 for c in record["cuts"] if c["deadman"])
        return (True, f"{n} {step.flap.mode} cut(s) made and restored, WAN down {down:.1f} s in all; "
                      f"dead-man's switch armed on {armed}/{n} cut(s)", {"flap": record})


def _failed(record: dict, message: str) -> tuple[bool, str, dict]:
    """The flap stops at its first cut or restore that failed; an outage left open is the cleanup's to restore."""
    record.update(finished=time.time(), completed=False, error=message)
    return False, message, {"flap": record}
