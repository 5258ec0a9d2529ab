"""Each flap step's per-phone counts and verdict, gathered from the run's store and written into its result.

The counting is fleet.experiment.flap_counts (pure); the bound is fleet.phoneconf.predict.flap_recovery_bound.
Here are only the inputs: what each phone runs (the configuration a rollout last pushed, else the inventory's, as
the run's other verdicts take it), its observations during the run, and the flap's window as the router confirmed
it. A phone known not back on server 1 within its flap bound fails the run, with a JUnit check of its own.
"""
from __future__ import annotations

import time

from fleet.experiment.flap_counts import FlapWindow, phone_flap
from fleet.phoneconf import predict
from fleet.state.store import RolloutStore


def sync_cuts(record: dict, outages: list[dict]) -> None:
    """Each cut's times as its outage record has them at the end of the run: a cut the run was stopped in (a
    signal, a lost lease) was restored by the cleanup, which only the outage record saw."""
    by_id = {o.get("id"): o for o in outages}
    for cut in record.get("cuts") or []:
        outage = by_id.get(cut.get("outage_id"))
        if outage is None:
            continue
        if outage.get("wan_cut") == "no":
            cut.update(start=None, end=None, never_cut=True)
            continue
        cut.update(start=outage.get("start"), end=outage.get("end"), deadman=outage.get("deadman") or "")


def window_of(record: dict, run_end: float) -> FlapWindow | None:
    """The flap's window: its first confirmed cut to the end of its last up time (None: no cut was made)."""
    cuts = [c for c in record.get("cuts") or [] if c.get("start") is not None]
    if not cuts:
        return None
    return FlapWindow(float(cuts[0]["start"]), float(record.get("finished") or run_end), cuts[-1].get("end"))


def judge(runner, result, now: float | None = None) -> None:
    """Fill in `phones` of every flap record in `result`, and fail the phones the evidence shows late."""
    if not result.flaps:
        return
    run_end = now if now is not None else time.time()
    site = runner.site
    pushed = RolloutStore(runner.store).last_pushed([p.mac for p in site.phones])
    verdicts = {v.mac: v for v in result.phones}
    for record in result.flaps:
        sync_cuts(record, result.outages)
        window = window_of(record, run_end)
        record["phones"] = []
        if window is None:
            continue
        flap_s = None if window.last_restore is None else window.last_restore - window.start
        for p in site.phones:
            params = pushed.get(p.mac) or runner.inv.effective_params(site, p)
            family = p.family.name
            obs = runner.store.observations(runner.exp, p.mac)
            bound = predict.flap_recovery_bound(params, family=family, dns_ttl=runner._dns_ttl(params, family),
                                                flap_s=flap_s, fallback_granted=predict.granted_expiry(obs, 2))
            servers = [t.index for t in predict.servers(params, 1, family) if t.registers]
            counted = phone_flap(p.mac, obs, runner.initial.get(p.mac), servers, window, run_end,
                                 bound.derivation.to_dict() if bound.derivation else None, result.evidence_sources)
            if counted.bound_s is None and bound.reason:
                counted.judgement = f"{counted.judgement} ({bound.reason})"
            record["phones"].append(counted.to_dict())
            v = verdicts.get(p.mac)
            if v is None:
                continue
            check = f"{record['step']}: back on server 1 within the flap recovery bound"
            v.checks.append({"name": check, "passed": counted.within_bound is not False, "message": counted.judgement})
            if counted.within_bound is False:
                v.passed = False
                v.reasons.append(f"{record['step']}: {counted.judgement}")
