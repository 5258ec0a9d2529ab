"""Exclusive leases on sites, held for the length of a piece of work, with their loss noticed and signalled.

A lease is a Redis key with a TTL (fleet.store). Whoever holds it must renew
it before the TTL runs out; if a renewal fails (the key expired while the
holder was stalled, someone deleted or took it, Redis lost it), the holder no
longer owns the site and must stop acting on it. `SiteLease` does the
renewing in a background thread and turns any such failure into `lost`, an
event the work checks before each action that touches the site.

Every SiteLease has a holder name of its own (`OWNER:TOKEN`, the token fresh
per instance), so two processes doing the same work (a redelivered task, a
second `resume`) never share a lease: the second one is refused while the
first is alive. A second one may wait, at most one TTL, for a lease left by a
dead predecessor with the same owner to expire; a renewal observed while it
waits proves the predecessor alive, and it gives up at once.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Callable, Iterable

import redis

from .store import LeaseHeld, Store

DEFAULT_TTL_S = 30.0


def default_ttl() -> float:
    """Seconds a lease outlives its last renewal: how long a crashed holder blocks its sites (FLEET_LEASE_TTL)."""
    return float(os.environ.get("FLEET_LEASE_TTL", DEFAULT_TTL_S))


class LeaseLost(RuntimeError):
    """Raised by `SiteLease.check()` once the lease is no longer ours; str() says why."""


class SiteLease:
    """`with SiteLease(store, sites, owner="rollout:ID") as lease:` ... `lease.check()` before acting on a site."""

    def __init__(self, store: Store, sites: Iterable[str], owner: str, ttl: float = DEFAULT_TTL_S,
                 renew_every: float | None = None, wait_for_predecessor: bool = True,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.sites = sorted(set(sites))
        self.owner = owner
        self.holder = f"{owner}:{uuid.uuid4().hex[:12]}"
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else ttl / 3
        self.wait_for_predecessor = wait_for_predecessor
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.reason = ""
        self._held: list[str] = []
        self._confirmed = 0.0           # monotonic time of the last renewal every site confirmed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ acquire / release
    def _predecessor(self, holder: str | None) -> bool:
        return bool(holder) and (holder == self.owner or holder.startswith(self.owner + ":"))

    def _acquire_one(self, site: str) -> float:
        """Take one site's lease; returns the monotonic time just before the attempt that took it."""
        deadline = time.monotonic() + self.ttl + 2
        last: tuple[str, int] | None = None
        while True:
            started = time.monotonic()
            try:
                self.store.acquire_lease(site, self.holder, self.ttl)
                return started
            except LeaseHeld:
                holder, pttl = self.store.lease_info(site)
                if holder is None:
                    continue   # it expired between our attempt and the look: try again
                if not (self.wait_for_predecessor and self._predecessor(holder)) or time.monotonic() > deadline:
                    raise
                if last is not None and last[0] == holder and pttl > last[1]:
                    # the TTL went up: the other holder renewed it, so it is alive and doing this work
                    raise LeaseHeld(f"site {site} is leased by {holder}, a live run of the same work") from None
                last = (holder, pttl)
                time.sleep(min(0.5, self.ttl / 10))

    def acquire(self) -> SiteLease:
        try:
            for site in self.sites:
                taken = self._acquire_one(site)
                self._held.append(site)
                if self._thread is None:
                    # renewing starts with the first site: taking the next ones may wait up to a TTL
                    self._confirmed = taken
                    self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.holder}", daemon=True)
                    self._thread.start()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Stop renewing and delete each site's lease if it is still ours (a lease someone else took is left alone)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for site in self._held:
            try:
                self.store.release_lease(site, self.holder)
            except redis.RedisError:
                pass   # Redis is away: the lease expires by itself within its TTL
        self._held = []

    def __enter__(self) -> SiteLease:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    # ------------------------------------------------------------ renewal
    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.reason = reason
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(reason)

    def _renew_loop(self) -> None:
        wait = self.renew_every
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                for site in list(self._held):
                    if not self.store.renew_lease(site, self.holder, self.ttl):
                        holder, _ = self.store.lease_info(site)
                        self._lose(f"the lease on site {site} is no longer ours "
                                   + (f"(now held by {holder})" if holder else "(it expired)"))
                        return
                self._confirmed = started   # the TTLs run from when we asked, not from when Redis answered
                wait = self.renew_every
            except redis.RedisError as exc:
                if time.monotonic() - self._confirmed >= self.ttl:
                    self._lose(f"the lease could not be renewed for {self.ttl:g}s ({type(exc).__name__}); it may have lapsed")
                    return
                wait = min(self.renew_every, 1.0)   # Redis is away: try again soon, before the TTL runs out

    def check(self) -> None:
        """Raise LeaseLost unless the lease is certainly still ours (renewed within its TTL)."""
        if not self.lost.is_set() and self._confirmed and time.monotonic() - self._confirmed >= self.ttl:
            self._lose(f"the lease was last confirmed {time.monotonic() - self._confirmed:.0f}s ago, "
                       f"beyond its {self.ttl:g}s TTL; it may have lapsed")
        if self.lost.is_set():
            raise LeaseLost(self.reason)
