"""Scheduled rollouts: cron entries from rollout playbooks, run by Celery beat, each run exactly once.

Beat does not catch up on runs it missed while it was down; we do not either
(a rollout at the wrong hour is worse than none), but a missed run is
recorded and printed instead of silently skipped.

Beat keeps no schedule file: `FleetScheduler` holds the schedule in memory
(it comes from the playbooks on every start) and records in Redis, through
the store, when it last sent each entry; the missed-run check reads those
times. Each message carries the cron time it fires for, and the rollout's id
is derived from the schedule's name and that time, so every copy of one run
(a redelivery after the broker's visibility timeout, a beat restarted within
the minute) names the same rollout. The task only creates that rollout and
hands it to one driver, under a lease whose holder is unique to the driver:
a second copy finds the rollout driven (or finished) and exits. The driver
runs in short ticks, each its own task (fleet.rollout.ticks), so that no task
waits on another one.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from celery import beat
from celery.schedules import crontab

from soundpoint import yamlfile
from soundpoint.yamlfile import FileError

from fleet.config import inventory as inv_mod
from fleet.rollout import playbook as rollout_playbook
from fleet.rollout.driver import Overloaded, Outcome, create
from fleet.rollout.ticks import Tick, TickedRollout
from fleet.rollout.plan import PlanError
from fleet.state.store import LeaseHeld, RolloutExists, RolloutStore, Store
from fleet.worker.errors import TaskFailed

log = logging.getLogger(__name__)


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
    """Every rollout playbook with a schedule in `directory`; experiment playbooks are ignored.

    The kind is read from the parsed YAML (so `kind: "rollout"` counts), not from the text.
    """
    entries = []
    for path in sorted(Path(directory).glob("*.yml")):
        data, _ = yamlfile.read(path)
        if not isinstance(data, dict) or data.get("kind") != "rollout":
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


def check_missed(store: Store, entries: list[Entry], now: datetime | None = None) -> list[str]:
    """Runs that were due since a schedule was first seen and never started; recorded in Redis and returned."""
    missed = []
    for e in entries:
        since = store.schedule_seen_since(e.name)
        last = store.schedule_last_run(e.name)
        due = previous_fire(e, now)
        if due is not None and due.timestamp() > since and due.timestamp() > last + 60:
            message = f"scheduled rollout {e.name} was due at {due.isoformat()} and did not run (scheduler or workers down)"
            store.record_missed(f"{e.name}@{due.isoformat()}", message)
            missed.append(message)
    return missed


def beat_schedule(entries: list[Entry], inventory: str) -> dict:
    return {f"rollout:{e.name}": {"task": "fleet.scheduled_rollout", "schedule": e.crontab(),
                                  "args": [e.playbook, inventory, e.name], "options": {"queue": "fleet.control"}}
            for e in entries}


# ---------------------------------------------------------------- beat
class FleetScheduler(beat.Scheduler):
    """Celery beat's in-memory scheduler, with no schedule file; it stamps each message with its fire time.

    `scheduler_for(store, entries)` makes the class beat instantiates (beat
    takes a class, not an instance).
    """

    store: Store
    entries: dict[str, Entry] = {}

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        planned = self.entries.get(entry.name)
        if planned is not None:
            due = previous_fire(planned) or datetime.now(ZoneInfo(planned.timezone)).replace(second=0, microsecond=0)
            entry.kwargs = dict(entry.kwargs or {}, fire_time=due.isoformat())
            try:
                self.store.set_schedule_sent(planned.name, time.time(), due.isoformat())
            except Exception as exc:  # Redis away: the run is still sent; the record is only for the missed check
                log.warning("could not record that %s was sent: %s", planned.name, type(exc).__name__)
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)


def scheduler_for(store: Store, entries: list[Entry]) -> type[FleetScheduler]:
    return type("FleetScheduler", (FleetScheduler,), {"store": store,
                                                      "entries": {f"rollout:{e.name}": e for e in entries}})


# ---------------------------------------------------------------- the scheduled task's work
def rollout_id(name: str, fire: datetime) -> str:
    """The rollout id of one scheduled run: the same for every copy of the message (see the module docstring)."""
    return f"{name}-{fire.astimezone(timezone.utc):%Y%m%d-%H%MZ}"


def _fire_time(playbook_path: str, fire_time: str | None) -> datetime:
    if fire_time:
        return datetime.fromisoformat(fire_time)
    # a message from before fire times were sent: the cron time due now is the best guess every copy shares
    pb = rollout_playbook.load(playbook_path)
    entry = Entry(pb.name, playbook_path, pb.schedule.cron, pb.schedule.timezone) if pb.schedule else None
    due = previous_fire(entry) if entry else None
    return due or datetime.now(timezone.utc).replace(second=0, microsecond=0)


def run_scheduled(store: Store, playbook_path: str, inventory_path: str, name: str, fire_time: str | None) -> dict:
    """Create this run's rollout (once) and take it for one driver; a copy that finds it driven or finished exits.

    Returns {"id", "holder", "tick"} when this copy drives it: the caller sends
    that first tick (fleet.rollout.tasks.rollout_tick), and the ticks drive it
    to its end. A run refused (bad playbook, plan, load check) is recorded as
    missed and raised as TaskFailed; the last tick fails the same way when the
    rollout did not end `done`.
    """
    rs = RolloutStore(store)
    try:
        rid = rollout_id(name, _fire_time(playbook_path, fire_time))
    except (FileError, ValueError) as exc:
        message = f"scheduled rollout {name} refused: {exc}"
        store.record_missed(f"{name}@refused:{time.time():.0f}", message)
        raise TaskFailed(message) from None
    store.set_schedule_last_run(name, time.time())
    # every copy of the message says it came: the rollout's history shows how many there were, and what each did
    rs.log(rid, "scheduled", schedule=name, pid=os.getpid(), host=socket.gethostname())
    try:
        try:
            _, pb, inv, _ = create(playbook_path, inventory_path, store, rid, exclusive=True)
        except RolloutExists:
            meta = rs.get(rid)
            if meta.get("status") not in ("planned", "running"):
                return {"id": rid, "status": meta.get("status"), "note": "already ran"}
            pb, inv = rollout_playbook.load(meta["playbook_path"]), inv_mod.load(meta["inventory_path"])
    except (FileError, PlanError, Overloaded) as exc:
        message = f"scheduled rollout {name} ({rid}) refused: {exc}"
        store.record_missed(f"{name}@{rid}:refused", message)
        raise TaskFailed(message) from None
    try:
        taken = ticked(store, rid, inv, pb).start()
    except LeaseHeld as exc:
        rs.log(rid, "not_driven", reason=f"another run drives it: {exc}")
        return {"id": rid, "note": f"driven by another run ({exc})"}
    if isinstance(taken, Outcome):   # another run finished it while this copy looked
        return {"id": rid, "status": taken.status, "note": taken.reason}
    holder, first = taken
    return {"id": rid, "holder": holder, "tick": first}


def ticked(store: Store, rid: str, inv: inv_mod.Inventory, pb: rollout_playbook.RolloutPlaybook) -> TickedRollout:
    """The driver of a scheduled rollout, as each tick builds it again from the rollout's record."""
    return TickedRollout(rid, inv, store, pb, say=lambda s: log.warning("rollout %s: %s", rid, s))


def run_tick(store: Store, rid: str, holder: str, number: int) -> Tick:
    """One tick of a scheduled rollout (fleet.rollout.ticks), with the playbook and inventory its record names."""
    meta = RolloutStore(store).get(rid)
    if not meta or "playbook_path" not in meta:
        raise TaskFailed(f"rollout {rid[:80]!r} does not exist")
    pb, inv = _files(rid, meta["playbook_path"], meta["inventory_path"])
    return ticked(store, rid, inv, pb).tick(holder, number)


@functools.lru_cache(maxsize=8)
def _files(rid: str, playbook_path: str, inventory_path: str) -> tuple[rollout_playbook.RolloutPlaybook, inv_mod.Inventory]:
    """The rollout's playbook and inventory, read once per rollout in a worker process, not on every tick."""
    return rollout_playbook.load(playbook_path), inv_mod.load(inventory_path)
