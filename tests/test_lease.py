"""SiteLease against a real Redis: unique holders, checked renewals, loss signalled, release only if ours."""
from __future__ import annotations

import time

import pytest

from conftest import wait_until
from fleet.state.lease import LeaseLost, SiteLease
from fleet.state.store import LeaseHeld, Store


@pytest.fixture
def store(redis_url):
    s = Store(redis_url)
    for site in ("lt-a", "lt-b"):
        s.break_lease(site)
    return s


def test_two_runs_of_the_same_work_never_share_a_lease(store):
    with SiteLease(store, ["lt-a", "lt-b"], owner="rollout:r1", ttl=2, renew_every=0.3) as first:
        second = SiteLease(store, ["lt-a", "lt-b"], owner="rollout:r1", ttl=2, renew_every=0.3)
        assert first.holder != second.holder
        with pytest.raises(LeaseHeld, match="live run"):
            second.acquire()   # it waits for the first only until it sees the first renew
        assert store.lease_info("lt-a")[0] == first.holder and store.lease_info("lt-b")[0] == first.holder
        first.check()
    assert store.lease_info("lt-a")[0] is None and store.lease_info("lt-b")[0] is None


def test_other_work_is_refused_at_once(store):
    with SiteLease(store, ["lt-a"], owner="exp:x", ttl=5):
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld):
            SiteLease(store, ["lt-a"], owner="rollout:r1", ttl=5).acquire()
        assert time.monotonic() - t0 < 1.0, "another owner's lease must not be waited for"


def test_a_dead_predecessor_of_the_same_work_is_waited_out(store):
    store.acquire_lease("lt-a", "rollout:r2:deadbeef", ttl=1.5)   # left by a driver that died
    with SiteLease(store, ["lt-a"], owner="rollout:r2", ttl=2) as lease:
        assert store.lease_info("lt-a")[0] == lease.holder


def test_a_stolen_lease_is_noticed_and_left_to_the_thief(store):
    seen = []
    lease = SiteLease(store, ["lt-a"], owner="rollout:r3", ttl=2, renew_every=0.2, on_lost=seen.append)
    with lease:
        store.break_lease("lt-a")
        store.acquire_lease("lt-a", "thief", ttl=10)
        wait_until(lease.lost.is_set, 5, "the renewal noticing the theft", step=0.05)
        with pytest.raises(LeaseLost, match="thief"):
            lease.check()
    assert seen and "thief" in seen[0]
    assert store.lease_info("lt-a")[0] == "thief", "release must not delete a lease that is no longer ours"


def test_an_expired_lease_is_lost_even_if_nobody_took_it(store):
    lease = SiteLease(store, ["lt-a"], owner="rollout:r4", ttl=2, renew_every=0.2)
    with lease:
        store.break_lease("lt-a")   # as if it had expired while the holder was stalled
        wait_until(lease.lost.is_set, 5, "the renewal noticing the expiry", step=0.05)
        with pytest.raises(LeaseLost, match="expired"):
            lease.check()


def test_an_unconfirmed_lease_counts_as_lost_after_its_ttl(store):
    """A renewal thread that cannot reach Redis (or is starved) must not let the work run past the TTL."""
    lease = SiteLease(store, ["lt-a"], owner="rollout:r5", ttl=0.5, renew_every=60)   # renews far too late
    with lease:
        wait_until(lambda: _raises_lost(lease), 5, "check() refusing a lease it had not confirmed for a TTL", step=0.05)


def _raises_lost(lease: SiteLease) -> bool:
    try:
        lease.check()
    except LeaseLost:
        return True
    return False
