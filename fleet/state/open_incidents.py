"""The incidents open at each site: one summary per incident, in one encoding for its writer
(fleet.state.incidents.IncidentStore, as the collector's detection opens, follows and closes an incident) and
its readers (`fleet status`, the metrics exporter). A site with no such key has no incident open.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from fleet.state.store import Keys, Store


@dataclass(frozen=True)
class OpenIncident:
    """An open incident's summary: when it started, the phones it follows, how many reached the fallback,
    and how many never did (yet)."""
    id: str
    site: str
    started: float
    phones: int
    failed_over: int
    never_failed_over: int


def encode(incident: OpenIncident) -> str:
    """The summary as stored in its site's hash (field: the incident id)."""
    return json.dumps({"started": incident.started, "phones": incident.phones, "failed_over": incident.failed_over,
                       "never_failed_over": incident.never_failed_over})


def set_open(store: Store, incident: OpenIncident) -> None:
    """Write (or update) an open incident's summary."""
    store.r.hset(Keys.site_incidents_open(incident.site), incident.id, encode(incident))


def close(store: Store, site: str, incident_id: str) -> None:
    store.r.hdel(Keys.site_incidents_open(site), incident_id)


def read(store: Store, sites: list[str]) -> dict[str, list[OpenIncident]]:
    """site -> its open incidents (an empty list for none); a damaged entry is skipped, not guessed."""
    pipe = store.r.pipeline(transaction=False)
    for s in sites:
        pipe.hgetall(Keys.site_incidents_open(s))
    out: dict[str, list[OpenIncident]] = {}
    for s, h in zip(sites, pipe.execute()):
        found = []
        for iid, raw in sorted(h.items()):
            try:
                d = json.loads(raw)
                found.append(OpenIncident(iid, s, float(d["started"]), int(d["phones"]), int(d["failed_over"]),
                                          int(d["never_failed_over"])))
            except (ValueError, KeyError, TypeError):
                continue
        out[s] = found
    return out
