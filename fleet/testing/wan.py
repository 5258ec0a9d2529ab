"""A WAN outage as a context manager for a user's pytest: cut on entry, the dead-man armed, restored on exit.

Direct, not through workers: the cut and the restore are the experiment's own (fleet.experiment.outage, which
arms the router's dead-man's switch in the same router step as the cut and reads the router's state back),
run here on the site's router driver (fleet.drivers.router) with the inventory's credentials. The restore marks
that guard a cut arriving after its restore live in this process (`LocalMarks`): one test process sends both,
in order, so nothing else can interleave.

The WAN comes back whatever ends the block: its end, a failed assertion, an exception, Ctrl-C, SIGTERM or
SIGHUP (under fleet.experiment.signals.SignalGuard the first of them raises inside the block, and any later one
waits until the restore is done). A process killed outright (SIGKILL, power) is the dead-man's case: the router
restores by itself `duration` seconds after the cut.
"""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import ValidationError

from fleet.base.outage import Outage, WanState
from fleet.config.inventory import Inventory, Secrets, Site
from fleet.drivers import router as routers
from fleet.drivers.errors import DriverError
from fleet.experiment import outage as outage_work
from fleet.experiment.router_work import lan_probe
from fleet.experiment.signals import SignalGuard

RESTORE_TRIES = 3
RESTORE_PAUSE_S = 2.0


class OutageError(RuntimeError):
    """The cut did not happen as asked, or the restore could not be confirmed; the message says what the router said."""


class LocalMarks:
    """The restore marks fleet.experiment.outage consults (`Store`'s two methods), kept in this process."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def request_outage_restore(self, outage_id: str) -> None:
        self.ids.add(outage_id)

    def outage_restore_requested(self, outage_id: str) -> bool:
        return outage_id in self.ids


@dataclass
class OutageRun:
    """One outage as it went: what was asked, what the router answered to the cut and to the restore."""
    site: str
    outage: Outage
    cut: dict = field(default_factory=dict)          # fleet.experiment.outage.cut's answer
    restore: dict = field(default_factory=dict)      # fleet.experiment.outage.restore's answer
    ended_by: str = ""                               # the signal or exception that ended the block, if any

    @property
    def id(self) -> str:
        return self.outage.id

    @property
    def started(self) -> float | None:
        """When the router had cut (its own answer), wall clock; None when nothing was cut."""
        return self.cut.get("t_cut_done") if self.cut.get("outcome") in ("cut", "already-cut") else None

    @property
    def ended(self) -> float | None:
        """When the WAN was back: the restore's answer; when the dead-man had restored it first (a block that
        outlived `duration`), the moment it fired, `duration` seconds after the cut."""
        if self.restore.get("outcome") not in routers.RESTORE_OUTCOMES:
            return None
        done = self.restore.get("t_restore_done")
        if self.restore.get("by") == "deadman" and self.started is not None and done is not None:
            return min(done, self.started + self.outage.max_duration)
        return done

    @property
    def restored(self) -> bool:
        """The router confirmed the WAN back as it was (no rule, qdisc or link of ours left)."""
        return bool(self.ended) and not self.restore.get("leftovers")

    def summary(self) -> dict[str, Any]:
        """What a report keeps of it: ids, outcomes, the dead-man, the router's state after (no secret in any)."""
        state = WanState.from_dict(self.restore.get("state"))
        return {"id": self.id, "site": self.site, "mode": self.outage.mode, "max_duration_s": self.outage.max_duration,
                "cut": self.cut.get("outcome", "not sent"), "deadman": self.cut.get("deadman", ""),
                "restore": self.restore.get("outcome", "not sent"), "restored_by": self.restore.get("by", ""),
                "restored": self.restored, "leftovers": list(self.restore.get("leftovers") or []),
                "wan_after": state.describe(with_outage=False) if state else "",
                "started": self.started, "ended": self.ended, "ended_by": self.ended_by}


def new_outage(mode: str, duration: int, outage_id: str | None = None, **shape: Any) -> Outage:
    """The outage value, its parameters checked; ValueError naming the parameter (nothing is touched yet)."""
    try:
        return Outage(id=outage_id or f"pytest-{uuid.uuid4().hex[:12]}", mode=mode, max_duration=duration, **shape)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "outage"
        where = {"max_duration": "duration", "id": "outage_id"}.get(where, where)   # the names the caller used
        raise ValueError(f"wan_outage({where}=...): {first.get('msg', 'invalid')}") from None


def checked_outage(site: Site, mode: str, duration: int, outage_id: str | None = None, **shape: Any) -> Outage:
    """`new_outage`, and a router in the site that can make `mode`: ValueError naming the parameter otherwise."""
    outage = new_outage(mode, duration, outage_id, **shape)
    if site.router is None:
        raise ValueError(f"site {site.name} has no router in the inventory: a WAN outage needs one")
    if mode not in routers.supported_modes(site.router.driver):
        raise ValueError(f"wan_outage(mode={mode!r}): the {site.router.driver} router of site {site.name} makes "
                         f"{', '.join(routers.supported_modes(site.router.driver))} only")
    return outage


def _connect(site: Site, secrets: Secrets) -> routers.RouterDriver:
    assert site.router is not None
    return routers.connect(site.router, secrets.credentials(site.router.credentials))


def _restore(site: Site, secrets: Secrets, marks: LocalMarks, outage: Outage) -> dict:
    """The restore, tried again on a router that does not answer (the restore is idempotent); OutageError at last."""
    last: DriverError | None = None
    for attempt in range(RESTORE_TRIES):
        try:
            drv = _connect(site, secrets)
            try:
                return outage_work.restore(marks, drv, outage)
            finally:
                drv.close()
        except DriverError as exc:
            last = exc
            time.sleep(RESTORE_PAUSE_S * (attempt + 1))
    raise OutageError(f"site {site.name}: outage {outage.id}: the restore was not confirmed after {RESTORE_TRIES} tries "
                      f"({last}); the router's dead-man restores the WAN by itself within {outage.max_duration} s "
                      f"of the cut")


@contextmanager
def wan_outage(inventory: Inventory, secrets: Secrets, site: Site, mode: str = "link-down", duration: int = 300,
               outage_id: str | None = None, keep: list[OutageRun] | None = None, **shape: Any) -> Iterator[OutageRun]:
    """Cut the site's WAN through its router (dead-man armed for `duration` seconds), yield the run, restore.

    `mode`: link-down, drop, degrade, dns-fail (those the router's driver can make); `shape`: loss, delay_ms,
    rate_kbit for a degrade. A cut the router does not confirm raises OutageError (after restoring). `keep`: a
    list the run is appended to before the router is asked anything, so a report has it however it ends."""
    outage = checked_outage(site, mode, duration, outage_id, **shape)
    run, marks = OutageRun(site.name, outage), LocalMarks()
    if keep is not None:
        keep.append(run)
    sent = False            # the cut may have reached the router: from here on, the restore is owed
    with SignalGuard() as guard:
        try:
            drv = _connect(site, secrets)
            try:
                sent = True
                run.cut = outage_work.cut(marks, drv, outage, lambda: lan_probe(inventory, site))
            finally:
                drv.close()
            if run.cut.get("outcome") not in ("cut", "already-cut"):
                raise OutageError(f"site {site.name}: outage {outage.id}: the router answered {run.cut.get('outcome')!r} "
                                  f"to the cut {run.cut.get('note', '')}".rstrip())
            yield run
        except BaseException as exc:
            run.ended_by = getattr(exc, "signame", "") or type(exc).__name__
            raise
        finally:
            guard.defer()       # from here on a signal waits: the restore is not cut short
            if sent:
                run.restore = _restore(site, secrets, marks, outage)
    if guard.received:
        raise KeyboardInterrupt(f"{guard.received[0]} during the WAN restore (the WAN is restored)")
