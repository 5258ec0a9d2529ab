"""The survivability record: how each site's phones lived through every outage, experiment or incident.

Users run fleet to know that their phones survive the provider's loss. Each
outage adds one entry to its site's `record:{site}` stream (the store's key
table): who measured it (an experiment that cut the WAN, or an incident the
collector observed), when, and per phone its model, firmware family and
version, failover and recovery seconds, whether it passed and why not. Entries
are small and read back whole; `summarize` turns them into figures per site
and per (firmware family, firmware version, model).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from fleet.state.store import K, Store

RECORD_MAXLEN = 10_000     # outages kept per site (the newest)
ORIGINS = ("experiment", "incident")


@dataclass(frozen=True)
class PhoneOutcome:
    """One phone through one outage."""
    mac: str
    model: str
    family: str
    firmware: str
    failover_s: float | None
    recovery_s: float | None
    passed: bool
    why: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outage:
    """One outage of a site as the record keeps it."""
    origin: str          # "experiment" or "incident"
    id: str
    site: str
    t: float             # when it started
    phones: list[PhoneOutcome]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Outage":
        return cls(origin=str(d["origin"]), id=str(d["id"]), site=str(d["site"]), t=float(d["t"]),
                   phones=[PhoneOutcome(**{k: p.get(k) for k in PhoneOutcome.__dataclass_fields__ if k in p})
                           for p in d.get("phones") or []])


def add(store: Store, outage: Outage) -> None:
    """Append one outage to its site's record."""
    if outage.origin not in ORIGINS:
        raise ValueError(f"origin {outage.origin!r} is not one of {', '.join(ORIGINS)}")
    store.r.xadd(K.record(outage.site), {"o": json.dumps(outage.to_dict())}, maxlen=RECORD_MAXLEN, approximate=True)


def read(store: Store, site: str, last: int | None = None) -> list[Outage]:
    """The site's outages, oldest first (its `last` newest only, when given); an unreadable entry is skipped."""
    rows = store.r.xrevrange(K.record(site), count=last) if last else None
    entries = list(reversed(rows)) if rows is not None else store.r.xrange(K.record(site))
    out = []
    for _, f in entries:
        try:
            out.append(Outage.from_dict(json.loads(f["o"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, nearest rank (a figure some phone really showed, not an interpolation)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def figures(values: list[float]) -> dict:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else None}


def _group(outages: list[Outage], key) -> dict:
    failover = [p.failover_s for o in outages for p in o.phones if key(p) and p.failover_s is not None]
    recovery = [p.recovery_s for o in outages for p in o.phones if key(p) and p.recovery_s is not None]
    failed = [{"mac": p.mac, "outage": o.id, "origin": o.origin, "t": o.t, "why": p.why}
              for o in outages for p in o.phones if key(p) and not p.passed]
    counted = [o for o in outages if any(key(p) for p in o.phones)]
    return {"outages": len(counted), "experiments": sum(o.origin == "experiment" for o in counted),
            "incidents": sum(o.origin == "incident" for o in counted),
            "phone_outages": sum(1 for o in outages for p in o.phones if key(p)),
            "failover_s": figures(failover), "recovery_s": figures(recovery), "failed": failed}


def summarize(site: str, outages: list[Outage]) -> dict:
    """One site's figures: the whole site, then per (firmware family, firmware version, model)."""
    kinds = sorted({(p.family or "", p.firmware or "", p.model or "") for o in outages for p in o.phones})
    return {"site": site, **_group(outages, lambda p: True),
            "by_firmware_and_model": [{"family": f, "firmware": v, "model": m,
                                       **_group(outages, lambda p, f=f, v=v, m=m: (p.family or "", p.firmware or "",
                                                                                      p.model or "") == (f, v, m))}
                                      for f, v, m in kinds]}


def last_outages(store: Store, site: str, n: int = 10) -> list[dict]:
    """The site's `n` newest outages in brief, newest first, for a report's "this site's last 10 outages"."""
    out = []
    for o in reversed(read(store, site, last=n)):
        fo = [p.failover_s for p in o.phones if p.failover_s is not None]
        rec = [p.recovery_s for p in o.phones if p.recovery_s is not None]
        out.append({"origin": o.origin, "id": o.id, "t": o.t, "phones": len(o.phones),
                    "failed": sum(not p.passed for p in o.phones), "failover_max_s": max(fo) if fo else None,
                    "recovery_max_s": max(rec) if rec else None})
    return out
