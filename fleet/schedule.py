"""Scheduled rollouts: cron entries from rollout playbooks, run by Celery beat, and missed runs reported.

Beat does not catch up on runs it missed while it was down; we do not either
(a rollout at the wrong hour is worse than none), but a missed run is
recorded and printed instead of silently skipped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from . import rollout_playbook
from .store import P
from .yamlfile import FileError


@dataclass(frozen=True)
class Entry:
    name: str
    playbook: str
    cron: str
    timezone: str

    def crontab(self) -> crontab:
        minute, hour, dom, month, dow = self.cron.split()
        tz = ZoneInfo(self.timezone)
        return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow,
                       nowfun=lambda: datetime.now(tz))


def load_entries(directory: str | Path) -> list[Entry]:
    """Every rollout playbook with a schedule in `directory`; experiment playbooks are ignored."""
    entries = []
    for path in sorted(Path(directory).glob("*.yml")):
        text = path.read_text()
        if "kind: rollout" not in text:
            continue
        pb = rollout_playbook.load(path)
        if pb.schedule:
            try:
                ZoneInfo(pb.schedule.timezone)
            except Exception:
                raise FileError(path, None, "schedule.timezone", f"unknown time zone {pb.schedule.timezone!r}") from None
            entry = Entry(pb.name, str(path.resolve()), pb.schedule.cron, pb.schedule.timezone)
            try:
                entry.crontab()
            except (ValueError, KeyError) as exc:
                raise FileError(path, None, "schedule.cron", f"not a cron expression ({exc})") from None
            entries.append(entry)
    return entries


def previous_fire(entry: Entry, now: datetime | None = None, horizon_days: int = 8) -> datetime | None:
    """The last time at or before `now` the entry was due, in its own time zone."""
    tz = ZoneInfo(entry.timezone)
    now = (now or datetime.now(tz)).astimezone(tz).replace(second=0, microsecond=0)
    c = entry.crontab()
    t = now
    for _ in range(horizon_days * 24 * 60):
        if (t.minute in c.minute and t.hour in c.hour and t.month in c.month_of_year
                and t.day in c.day_of_month and (t.isoweekday() % 7) in c.day_of_week):
            return t
        t -= timedelta(minutes=1)
    return None


def check_missed(r, entries: list[Entry], now: datetime | None = None) -> list[str]:
    """Runs that were due since a schedule was first seen and never started; recorded in Redis and returned."""
    missed = []
    for e in entries:
        since_key, last_key = f"{P}schedule:{e.name}:since", f"{P}schedule:{e.name}:last_run"
        r.setnx(since_key, time.time())
        since = float(r.get(since_key))
        last = float(r.get(last_key) or 0)
        due = previous_fire(e, now)
        if due is not None and due.timestamp() > since and due.timestamp() > last + 60:
            message = f"scheduled rollout {e.name} was due at {due.isoformat()} and did not run (scheduler or workers down)"
            if r.sadd(f"{P}schedule:missed:seen", f"{e.name}@{due.isoformat()}"):
                r.rpush(f"{P}schedule:missed", message)
            missed.append(message)
    return missed


def beat_schedule(entries: list[Entry], inventory: str) -> dict:
    return {f"rollout:{e.name}": {"task": "fleet.scheduled_rollout", "schedule": e.crontab(),
                                  "args": [e.playbook, inventory, e.name], "options": {"queue": "fleet.control"}}
            for e in entries}
