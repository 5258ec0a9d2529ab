"""Which collector listens for a site now, so that a probe can tell "in use by this site's collector" from "in use
by something else".

A collector that listens for a site (`fleet collector`, or a worker's own) writes its listening addresses, host
and pid into Redis once its listeners are up and again every HEARTBEAT_S; the record's TTL is reset each time, so
its age comes from Redis' clock alone (hosts' clocks may differ). A stopped collector withdraws its record; a
killed one's record ages and expires by itself.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from fleet.state.store import Store

HEARTBEAT_S = 2.0
ALIVE_S = 10.0          # a collector that reported within this is taken as running (five missed heartbeats)
RECORD_TTL_S = 60.0     # a record outlives its collector this long, so a probe can say when it last reported


@dataclass(frozen=True)
class CollectorRecord:
    """One running collector of one site: where it listens and which process it is."""

    site: str
    host: str
    pid: int
    syslog: str
    events: str
    since: float

    @property
    def holder(self) -> str:
        """Who wrote the record: only this collector may withdraw it."""
        return f"{self.host}:{self.pid}"

    def listens_on(self, address: str) -> bool:
        return address in (self.syslog, self.events)

    def to_fields(self) -> dict[str, str]:
        return {"holder": self.holder, "host": self.host, "pid": str(self.pid), "syslog": self.syslog,
                "events": self.events, "since": repr(self.since)}

    @classmethod
    def from_fields(cls, site: str, fields: dict[str, str]) -> "CollectorRecord | None":
        """The record as stored; None for a damaged one (it reads as no record)."""
        try:
            return cls(site, fields["host"], int(fields["pid"]), fields["syslog"], fields["events"],
                       float(fields.get("since") or 0))
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Sighting:
    """A collector record as a reader finds it: the record and how long ago it was last written."""

    record: CollectorRecord
    age_s: float

    @property
    def alive(self) -> bool:
        return self.age_s <= ALIVE_S

    def describe(self) -> str:
        """"pid N on host H, alive 2 s ago" (or "last reported 40 s ago")."""
        when = f"alive {self.age_s:.0f} s ago" if self.alive else f"last reported {self.age_s:.0f} s ago"
        return f"pid {self.record.pid} on host {self.record.host}, {when}"


def this_process(site: str, syslog: str, events: str) -> CollectorRecord:
    """The record of a collector running in this process, listening on `syslog` and `events`."""
    return CollectorRecord(site, socket.gethostname(), os.getpid(), syslog, events, time.time())


def announce(store: Store, record: CollectorRecord) -> None:
    """Write (or refresh) the record: called when the listeners are up and every HEARTBEAT_S after."""
    store.set_site_collector(record.site, record.to_fields(), RECORD_TTL_S)


def withdraw(store: Store, record: CollectorRecord) -> None:
    """Remove the record, if it is still this collector's (another may have started since)."""
    store.clear_site_collector(record.site, record.holder)


def sighting(store: Store, site: str) -> Sighting | None:
    """The site's collector as last reported, or None when none reported within RECORD_TTL_S."""
    fields, ttl_left_ms = store.site_collector(site)
    record = CollectorRecord.from_fields(site, fields) if fields else None
    if record is None:
        return None
    return Sighting(record, max(0.0, RECORD_TTL_S - ttl_left_ms / 1000.0))


def process_exists(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user's counts: it exists)."""
    if pid <= 0:        # 0 and negatives name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
