"""What one Prometheus scrape reads from Redis: the sites' phone rows, evidence reports, open incidents,
failover/recovery histograms and the progress of unfinished rollouts, in a handful of pipelined round trips.

Only reading: the exporter (fleet.evidence.metrics) shapes this into metric families at scrape time, so nothing
is kept in the collector's memory between scrapes and every value is what the store says now. Rollout state
names are the store's (RolloutStore); which of them are done or failed is said here once, for the exporter.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from fleet.state import durations, open_incidents
from fleet.state.store import Keys, RolloutStore, Store

ROLLOUT_DONE = ("verified", "skipped")
ROLLOUT_FAILED = ("failed", "rolled_back", "rollback_failed")      # fleet.rollout.policy.FAILED (a test checks)
ROLLOUT_UNFINISHED = ("planned", "running", "halted")             # a halted rollout waits for resume or abort
ROLLOUTS_LOOKED_AT = 50                                            # the newest rollouts a scrape considers
_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.:+=-]+$")


@dataclass(frozen=True)
class RolloutProgress:
    """One unfinished rollout's phones at one site: done (verified or skipped), failed, remaining, and the wave
    the site's phones are in (the first wave with a phone not settled; the last one once all are)."""
    rollout: str
    site: str
    status: str
    done: int
    failed: int
    remaining: int
    wave: int


@dataclass
class Snapshot:
    """Everything one scrape exports, read at `t` (this host's clock)."""
    t: float
    sites: list[str]
    rows: dict[str, list[dict]] = field(default_factory=dict)          # site -> `fleet status --json` rows
    evidence: dict[str, dict] = field(default_factory=dict)            # site -> the collector's evidence report
    incidents: dict[str, list[open_incidents.OpenIncident]] = field(default_factory=dict)
    histograms: list[durations.Histogram] = field(default_factory=list)
    rollouts: list[RolloutProgress] = field(default_factory=list)


def _by_phone(store: Store, site: str, fields: list[str]) -> list[list[str | None]]:
    """[mac, *values] for each phone of the site, `fields` being hash fields of per-phone keys given as
    (key pattern with `*` for the MAC)->field: one SORT_RO ... GET per site (Redis fetches every phone's field
    itself: one reply rather than one per phone, which is what keeps a 10,000-phone scrape cheap)."""
    flat = store.r.sort_ro(Keys.site_phones(site), by="nosort", get=["#", *fields])
    width = 1 + len(fields)
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def site_rows(store: Store, sites: list[str]) -> dict[str, list[dict]]:
    """site -> its phones' ready-made status rows (Store.register_phones/record_observations keep them)."""
    out: dict[str, list[dict]] = {}
    for s in sites:
        rows = []
        for _mac, row in _by_phone(store, s, [Keys.phone("*") + "->row"]):
            if row:
                try:
                    rows.append(json.loads(row))
                except ValueError:
                    continue
        out[s] = rows
    return out


def rollout_progress(store: Store, sites: list[str]) -> list[RolloutProgress]:
    """Per unfinished rollout (of the newest ROLLOUTS_LOOKED_AT) and site, its phones' progress; a site none of
    whose phones the rollout has is left out."""
    wanted = [r for r in RolloutStore(store).list(ROLLOUTS_LOOKED_AT) if r.get("status") in ROLLOUT_UNFINISHED]
    out = []
    for r in wanted:
        phone = Keys.rollout_phone(r["id"], "*")
        for s in sites:
            if _PLAIN_ID.match(r["id"]):
                found = _by_phone(store, s, [phone + "->state", phone + "->wave"])
            else:   # an id SORT would read as a pattern (`*`, `->`): one read per phone
                macs = sorted(store.r.smembers(Keys.site_phones(s)))
                pipe = store.r.pipeline(transaction=False)
                for mac in macs:
                    pipe.hmget(Keys.rollout_phone(r["id"], mac), "state", "wave")
                found = [[mac, *answer] for mac, answer in zip(macs, pipe.execute())]
            states = [(state, int(wave or 0)) for _mac, state, wave in found if state]
            if not states:
                continue
            done = sum(st in ROLLOUT_DONE for st, _ in states)
            failed = sum(st in ROLLOUT_FAILED for st, _ in states)
            open_waves = [w for st, w in states if st not in ROLLOUT_DONE + ROLLOUT_FAILED]
            out.append(RolloutProgress(r["id"], s, str(r["status"]), done, failed, len(states) - done - failed,
                                       min(open_waves) if open_waves else max(w for _, w in states)))
    return out


def read(store: Store, sites: list[str]) -> Snapshot:
    """One scrape's worth of state for `sites`."""
    sites = sorted(set(sites))
    snap = Snapshot(t=time.time(), sites=sites)
    snap.rows = site_rows(store, sites)
    snap.evidence = store.site_evidence(sites)
    snap.incidents = open_incidents.read(store, sites)
    snap.histograms = durations.read(store, sites)
    snap.rollouts = rollout_progress(store, sites)
    return snap
