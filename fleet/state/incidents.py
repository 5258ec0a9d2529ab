"""Passive outage incidents in Redis: what the collector saw of a site-wide loss of server 1 that nobody caused.

Stored like an experiment (an `incident:{id}` hash, an append-only event
stream, one observation stream per phone) so the report machinery of
experiments reads it the same way; the key names are the store's
(fleet.state.store.Keys and its table). While an incident is open, its
site's `site:{site}:incidents:open` hash holds its summary (started, phones
followed, how many reached server 2, how many never did yet): what `fleet
status` and the metrics exporter read as "incidents open".
"""
from __future__ import annotations

import json
import time
import uuid

from fleet.state import durations, open_incidents, record
from fleet.state.store import K, OBS_MAXLEN, EVENTS_MAXLEN, Store

OPEN, CLOSED = "open", "closed"


class IncidentStore:
    """Incident records; every write is one pipeline, so a reader never sees an incident half opened or closed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r

    def record(self, outage: record.Outage) -> None:
        """A closed incident's outage into its site's survivability record, and its measured times into the site's
        failover/recovery histograms for /metrics (counted once per incident)."""
        record.add(self.store, outage)
        durations.record(self.store, outage.site, "incident", outage.id,
                         {"failover": [p.failover_s for p in outage.phones if p.failover_s is not None],
                          "recovery": [p.recovery_s for p in outage.phones if p.recovery_s is not None]})

    @staticmethod
    def new_id(started: float) -> str:
        """An id that sorts by the incident's start, as experiment ids do: `i-20261206-041500-ab12cd`."""
        return time.strftime("i-%Y%m%d-%H%M%S-", time.gmtime(started)) + uuid.uuid4().hex[:6]

    def open(self, site: str, started: float, detected: float, baseline: list[str], threshold: int,
             window_s: float) -> str:
        """Record a new open incident of `site`, starting at `started` (the earliest loss the evidence shows)."""
        iid = self.new_id(started)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(K.incident(iid), mapping={"id": iid, "site": site, "status": OPEN, "started": repr(started),
                                            "detected": repr(detected), "baseline": json.dumps(sorted(baseline)),
                                            "threshold": threshold, "window_s": repr(window_s),
                                            "kind": "observed, not caused"})
        pipe.zadd(K.INCIDENTS, {iid: started})
        pipe.hset(K.site_incidents_open(site), iid, open_incidents.encode(
            open_incidents.OpenIncident(iid, site, started, len(baseline), 0, len(baseline))))
        pipe.execute()
        return iid

    def set_summary(self, site: str, iid: str, started: float, phones: int, failed_over: int) -> None:
        """The open incident's summary as phones move: how many of its phones reached server 2 so far."""
        open_incidents.set_open(self.store, open_incidents.OpenIncident(iid, site, started, phones, failed_over,
                                                                        phones - failed_over))

    def set(self, iid: str, **fields) -> None:
        self.r.hset(K.incident(iid), mapping={k: (json.dumps(v) if isinstance(v, (dict, list)) else
                                                  repr(v) if isinstance(v, float) else v) for k, v in fields.items()})

    def close(self, iid: str, site: str, finished: float, because: str) -> None:
        """Close the incident: its record says so and why, and it leaves its site's open incidents."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(K.incident(iid), mapping={"status": CLOSED, "finished": repr(finished), "closed_because": because})
        pipe.hdel(K.site_incidents_open(site), iid)
        pipe.execute()

    def log(self, iid: str, kind: str, **data) -> None:
        entry = {"kind": kind, "t": time.time(), **data}
        self.r.xadd(K.incident_events(iid), {"e": json.dumps(entry, default=str)}, maxlen=EVENTS_MAXLEN,
                    approximate=True)

    def keep_observations(self, iid: str, rows: list[dict]) -> None:
        """Observations of the incident's phones ({mac, t, ..., working_server}), each to its phone's stream."""
        if not rows:
            return
        pipe = self.r.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(K.incident_obs(iid, row["mac"]), {"o": json.dumps(row)}, maxlen=OBS_MAXLEN, approximate=True)
        pipe.execute()

    # ------------------------------------------------------------ reading
    def get(self, iid: str) -> dict:
        """The incident's record with numbers as numbers ({} when there is none)."""
        h = self.r.hgetall(K.incident(iid))
        return decode(h) if h else {}

    def events(self, iid: str) -> list[dict]:
        return [json.loads(f["e"]) for _, f in self.r.xrange(K.incident_events(iid))]

    def observations(self, iid: str, mac: str) -> list[dict]:
        return [json.loads(f["o"]) for _, f in self.r.xrange(K.incident_obs(iid, mac))]

    def list(self, limit: int = 50, site: str | None = None) -> list[dict]:
        """The newest incidents first (of one site with `site`)."""
        ids = self.r.zrevrange(K.INCIDENTS, 0, -1 if site else limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(K.incident(i))
        out = [decode(h) for h in pipe.execute() if h and (site is None or h.get("site") == site)]
        return out[:limit]


def decode(h: dict[str, str]) -> dict:
    """An incident hash as its readers want it: times and counts as numbers, the baseline as a list."""
    out: dict = dict(h)
    for k in ("started", "detected", "restored", "finished", "window_s"):
        if out.get(k):
            out[k] = float(out[k])
    if out.get("threshold"):
        out["threshold"] = int(out["threshold"])
    for k in ("baseline", "phones"):
        if isinstance(out.get(k), str):
            out[k] = json.loads(out[k])
    return out
