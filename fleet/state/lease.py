"""Exclusive leases on sites, held for the length of a piece of work, with their loss noticed and signalled.

A lease is a Redis key with a TTL (fleet.state.store). Whoever holds it must renew
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

from fleet.drivers.errors import DeviceTimeout
from fleet.state.store import LeaseHeld, Store, lease_holder_run

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
                    raise LeaseHeld(f"site {site} is leased by {lease_holder_run(holder)}, a live run of the same work") from None
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
                                   + (f"(now held by {lease_holder_run(holder)})" if holder else "(it expired)"))
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


# ------------------------------------------------------------ one REST request at a time per phone
REST_LOCK_TTL_S = 10.0      # how long a dead holder blocks the phone; a live one renews it (every TTL/3) while held
REST_LOCK_WAIT_S = 20.0     # how long a request waits for the phone's lock before giving up


class PhoneLockUnavailable(DeviceTimeout):
    """The phone's REST lock could not be taken because the store (Redis) is away: the request was not sent.
    A DriverError, so every caller that reads a phone (the poller, a control's call check) reports it as the
    phone's state being unknown instead of crashing."""


class PhoneRestLock:
    """`with PhoneRestLock(store, mac, owner):` one REST request to the phone; `async with` in a collector.

    UC Software serves one REST request at a time and refuses a concurrent one (status 4001). The lock is a
    short lease in the store (`Store.acquire_phone_lock`), taken per request by every process that talks REST
    to the phone (the collectors' lineInfo poller, the workers' controls, the experiment's dial, `--probe`) and
    released right after. A request that finds the phone held queues for it, so a poller that frees and retakes
    the lock at once cannot keep it out (Store.acquire_phone_lock). While it is held it is renewed every TTL/3,
    so a request that runs longer than the TTL (a digest retry, a slow body: fleet.drivers.control.rest bounds
    one request to `request_budget`) never loses it to a second process mid-request; the TTL frees it if the
    holder dies. Waiting is bounded: past `wait` seconds the request is not sent and DeviceTimeout says who held
    the phone. With Redis away nothing is sent either (PhoneLockUnavailable).
    """

    def __init__(self, store: Store, mac: str, owner: str, ttl: float = REST_LOCK_TTL_S,
                 wait: float = REST_LOCK_WAIT_S) -> None:
        self.store, self.mac, self.ttl, self.wait = store, mac, ttl, wait
        self.holder = f"{owner}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()          # a renewal found the lock no longer ours (Redis lost it)

    @classmethod
    def factory(cls, store: Store, mac: str, owner: str) -> Callable[[], "PhoneRestLock"]:
        return lambda: cls(store, mac, owner)

    def _unavailable(self, exc: Exception) -> PhoneLockUnavailable:
        return PhoneLockUnavailable(f"phone {self.mac}", f"the store holding the phone's REST lock is unavailable "
                                                         f"({type(exc).__name__}); nothing sent")

    def _try(self) -> bool:
        try:
            return self.store.acquire_phone_lock(self.mac, self.holder, self.ttl, claim=True)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _refused(self) -> Exception:
        try:
            self.store.give_up_phone_turn(self.mac, self.holder)
            held = self.store.phone_lock_holder(self.mac)
            if held is None:
                claimant = self.store.phone_turn_claimant(self.mac)
                held = f"none now; first in its queue {claimant}" if claimant else None
        except redis.RedisError:
            held = None
        return DeviceTimeout(f"phone {self.mac}", f"another REST request to it ({str(held or '?')[:60]}) held the "
                                                  f"phone for over {self.wait:g}s; nothing sent")

    def _release(self) -> None:
        KEEPER.forget(self)
        try:
            self.store.release_phone_lock(self.mac, self.holder)
        except redis.RedisError:
            pass   # the request is done; the lock expires by itself within its TTL

    def _start_renewing(self) -> None:
        try:
            KEEPER.keep(self)
        except BaseException:
            self._release()      # no keeper (a thread could not start): the lock is not held unrenewed
            raise

    def __enter__(self) -> "PhoneRestLock":
        deadline = time.monotonic() + self.wait
        pause = 0.01
        while not self._try():
            if time.monotonic() >= deadline:
                raise self._refused()
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        self._start_renewing()
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    async def __aenter__(self) -> "PhoneRestLock":
        import asyncio

        deadline = time.monotonic() + self.wait
        pause = 0.01
        while not await asyncio.to_thread(self._try):
            if time.monotonic() >= deadline:
                raise await asyncio.to_thread(self._refused)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        self._start_renewing()
        return self

    async def __aexit__(self, *exc) -> None:
        import asyncio

        await asyncio.to_thread(self._release)


class RestLockKeeper:
    """Renews every PhoneRestLock this process holds, every TTL/3, from one thread.

    A REST request holds its phone's lock for milliseconds, far less than TTL/3; a thread started and joined per
    request to renew it (as before) cost some 0.25 ms of CPU a request, half the lock's whole cost
    (bench/rest_lock.py). Here one daemon thread sleeps until the earliest renewal is due and renews the locks
    held that long. It is started on first use in each process: a forked worker child starts its own, with a
    fresh condition (threads do not survive fork, and a lock held at the fork would stay held in the child)."""

    def __init__(self) -> None:
        self._fresh()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._fresh)

    def _fresh(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[PhoneRestLock, float] = {}     # held lock -> monotonic time of its next renewal
        self._pid = 0

    def keep(self, lock: PhoneRestLock) -> None:
        with self._cond:
            if self._pid != os.getpid():
                keeper = threading.Thread(target=self._run, name="rest lock keeper", daemon=True)
                self._pid = os.getpid()
                try:
                    keeper.start()
                except BaseException:
                    self._pid = 0         # the next lock tries again
                    raise
            self._due[lock] = time.monotonic() + lock.ttl / 3
            self._cond.notify()

    def forget(self, lock: PhoneRestLock) -> None:
        with self._cond:
            self._due.pop(lock, None)

    def held(self) -> int:
        with self._cond:
            return len(self._due)

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            with self._cond:
                now = time.monotonic()
                due = [lock for lock, at in self._due.items() if at <= now]
                for lock in due:
                    self._due[lock] = now + lock.ttl / 3
                if not due:
                    self._cond.wait(min(self._due.values(), default=now + 60) - now)
                    continue
            self._renew(due)       # outside the condition: it waits on Redis, requests go on meanwhile

    def _renew(self, due: list[PhoneRestLock]) -> None:
        """Every due lock in one round trip per store (a lock no longer ours is marked lost and forgotten). Nothing
        it raises stops the keeper: the next tick tries again, within the TTL."""
        by_store: dict[int, list[PhoneRestLock]] = {}
        for lock in due:
            by_store.setdefault(id(lock.store), []).append(lock)
        for locks in by_store.values():
            try:
                ours = locks[0].store.renew_phone_locks([(lk.mac, lk.holder, lk.ttl) for lk in locks])
            except Exception:     # Redis away (or anything else): try again at the next tick, before the TTL runs out
                continue
            for lock, still in zip(locks, ours):
                if not still:
                    lock.lost.set()
                    self.forget(lock)


KEEPER = RestLockKeeper()
