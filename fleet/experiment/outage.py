"""Worker side of an outage: cut and restore one router, in whatever order the tasks arrive.

Routers that keep outage state themselves (Linux over SSH) settle the order
on the router. For the others (SNMP), and as a second guard for all, a
restore first leaves a mark in Redis; a cut looks for it before cutting and
again after, and undoes itself when it appears. Whichever way the two
interleave, the last write to the router is the restore's.
"""
from __future__ import annotations

import time
from typing import Callable

import redis

from fleet.drivers.router import OutageSpec, RouterDriver


def cut(store, drv: RouterDriver, spec: OutageSpec, probe: Callable[[], dict]) -> dict:
    """Arm the dead-man's switch and cut (one step on the router), then prove the cut from the LAN side."""
    if store.outage_restore_requested(spec.outage_id):
        return {"outcome": "cancelled", "note": "its restore arrived first: nothing was cut", "t_cut": None}
    t_cut = time.time()
    res = drv.cut(spec)
    result = {**res.to_dict(), "t_cut": t_cut, "t_cut_done": res.done_at or time.time(), "has_deadman": drv.has_deadman}
    if res.outcome in ("cut", "already-cut") and store.outage_restore_requested(spec.outage_id):
        back = drv.restore(spec.outage_id, spec.mode)
        result.update(outcome="cancelled", note=f"its restore arrived during the cut: undone ({back.outcome})",
                      state=back.state)
        return result
    if res.outcome in ("cut", "already-cut") and spec.mode != "degrade":
        result["probe"] = probe()
    return result


def restore(store, drv: RouterDriver, outage_id: str, mode: str) -> dict:
    """End the outage on the router and report what the router says, checked against its state."""
    note = ""
    try:
        store.request_outage_restore(outage_id)
    except redis.RedisError as exc:   # the router comes first: restore it even when the guard cannot be written
        note = f"the restore mark could not be written to Redis ({type(exc).__name__}); a late cut is stopped by the router only"
    t_restore = time.time()
    res = drv.restore(outage_id, mode)
    result = {**res.to_dict(), "t_restore": t_restore, "t_restore_done": res.done_at or time.time()}
    if note:
        result["note"] = note
    left = leftovers(res.state)
    if left and res.outcome != "cancelled-before-cut":
        result["leftovers"] = left
    return result


def leftovers(state: dict) -> list[str]:
    """What of ours the router still shows after a restore: each item is a reason the WAN is not back as it was."""
    left = []
    if state.get("link_up") is False:
        left.append("the WAN link is down")
    if state.get("rules_ours"):
        left.append(f"{state['rules_ours']} firewall rule(s) of this outage remain")
    if state.get("qdisc_ours"):
        left.append("our qdisc remains on the WAN interface")
    if state.get("routes_missing") and state.get("link_up"):
        left.append(f"{len(state['routes_missing'])} route(s) through the WAN not back: {'; '.join(state['routes_missing'][:3])}")
    return left
