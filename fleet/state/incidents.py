"""Passive outage incidents in Redis: what the collector saw of a site-wide loss of server 1 that nobody caused.

Stored like an experiment (an `incident:{id}` hash, an append-only event
stream, one observation stream per phone) so the report machinery of
experiments reads it the same way; the key names are the store's
(fleet.state.store.Keys and its table). `open_ids()` is what counts as
"incidents open" for status and metrics.
"""
from __future__ import annotations

import json
import time
import uuid

from fleet.state.store import K, OBS_MAXLEN, EVENTS_MAXLEN, Store

OPEN, CLOSED = "open", "closed"


class IncidentStore:
    """Incident records; every write is one pipeline, so a reader never sees an incident half opened or closed."""

    def __init__(self, store: Store) -> None:
        self.r = store.r

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
        pipe.sadd(K.INCIDENTS_OPEN, iid)
        pipe.set(K.site_incident(site), iid)
        pipe.execute()
        return iid

    def set(self, iid: str, **fields) -> None:
        self.r.hset(K.incident(iid), mapping={k: (json.dumps(v) if isinstance(v, (dict, list)) else
                                                  repr(v) if isinstance(v, float) else v) for k, v in fields.items()})

    def close(self, iid: str, site: str, finished: float, because: str) -> None:
        """Close the incident; the site's open-incident key goes only if it still names this one."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(K.incident(iid), mapping={"status": CLOSED, "finished": repr(finished), "closed_because": because})
        pipe.srem(K.INCIDENTS_OPEN, iid)
        pipe.execute()
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        self.r.eval(script, 1, K.site_incident(site), iid)

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

    def open_ids(self) -> list[str]:
        """Every incident not closed yet, any site."""
        return sorted(self.r.smembers(K.INCIDENTS_OPEN))

    def open_for(self, site: str) -> str | None:
        """The site's open incident, if any."""
        return self.r.get(K.site_incident(site))


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
