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

from fleet.drivers.router import Outage, RouterDriver


def cut(store, drv: RouterDriver, outage: Outage, probe: Callable[[], dict]) -> dict:
    """Arm the dead-man's switch and cut (one step on the router), then prove the cut from the LAN side."""
    if store.outage_restore_requested(outage.id):
        return {"outcome": "cancelled", "note": "its restore arrived first: nothing was cut", "t_cut": None}
    t_cut = time.time()
    res = drv.cut(outage)
    result = {**res.to_dict(), "t_cut": t_cut, "t_cut_done": res.done_at or time.time(), "has_deadman": drv.has_deadman}
    if res.outcome in ("cut", "already-cut") and store.outage_restore_requested(outage.id):
        back = drv.restore(outage)
        result.update(outcome="cancelled", note=f"its restore arrived during the cut: undone ({back.outcome})",
                      state=back.to_dict()["state"])
        return result
    if res.outcome in ("cut", "already-cut") and outage.mode != "degrade":
        result["probe"] = probe()
    return result


def restore(store, drv: RouterDriver, outage: Outage) -> dict:
    """End the outage on the router and report what the router says, checked against its state."""
    note = ""
    try:
        store.request_outage_restore(outage.id)
    except redis.RedisError as exc:   # the router comes first: restore it even when the guard cannot be written
        note = f"the restore mark could not be written to Redis ({type(exc).__name__}); a late cut is stopped by the router only"
    t_restore = time.time()
    res = drv.restore(outage)
    result = {**res.to_dict(), "t_restore": t_restore, "t_restore_done": res.done_at or time.time()}
    if note:
        result["note"] = note
    left = res.state.leftovers() if res.state is not None else []
    if left and res.outcome != "cancelled-before-cut":
        result["leftovers"] = left
    return result
