"""The per-phone REST lock (fleet.state.lease.PhoneRestLock) against the tests' real Redis (review of issue 16):
held for the whole of a request that outlives its TTL, a store that is away is a DriverError with nothing sent,
and every REST sender holds it: the controls, the collector's poller, the experiment's dial, `--probe`. And the
pushed call state a worker waits for is told fresh by the store's push count, not by comparing two hosts' clocks.
"""
from __future__ import annotations

import asyncio
import socket
import time
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import pytest

from fleet.experiment import call_work
from fleet.sites import probe as site_probe
from fleet.evidence.sources.poller import Poller
from fleet.drivers.control import polling, rest
from fleet.drivers.errors import DeviceTimeout, DriverError
from fleet.config.inventory import Credentials, Phone
from fleet.state.lease import PhoneRestLock
from fleet.phones import PhoneAccess, control
from fleet.state.store import Keys, Store
from soundpoint import conformance
from test_hostile_phone_answers import Answering, _head, answering  # noqa: F401  (the fixture)

CREDS = Credentials(username="Polycom", password="s3cret-admin")
MAC = "0004f2abcdef"


@pytest.fixture
def store(redis_url):
    s = Store(redis_url)
    s.r.delete(Keys.rest_lock(MAC), Keys.rest_queue(MAC), Keys.rest_queue_alive(MAC), Keys.phone(MAC))
    return s


@pytest.fixture
def dead_store() -> Store:
    """A Store whose Redis is away: a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return Store(f"redis://127.0.0.1:{port}/0")


def _uc5(port: int) -> Phone:
    return Phone(mac=MAC, model="VVX 410", address="127.0.0.1", http_port=port, credentials="admin",
                 firmware_family="uc-5.x", firmware_version="5.8.0")


def _answer_with_holder(store: Store, entry_id: str, seen: list):
    """Answers the corpus entry's body; notes who held the phone's REST lock when the request arrived."""
    body = conformance.get(entry_id).body.encode()

    def respond(h: BaseHTTPRequestHandler) -> None:
        seen.append((h.path, store.phone_lock_holder(MAC)))
        _head(h, len(body))
        h.wfile.write(body)
    return respond


# ------------------------------------------------------------------ Redis away
def test_a_store_that_is_away_is_a_driver_error_and_nothing_is_sent(dead_store):
    with pytest.raises(DriverError, match="store .* unavailable.*nothing sent"):
        with PhoneRestLock(dead_store, MAC, owner="control", wait=1):
            raise AssertionError("the request must not be sent without the lock")


def test_the_poller_reports_a_store_that_is_away_instead_of_raising(dead_store, answering):
    seen: list = []
    server = answering(lambda h: seen.append(h.path))

    async def poll():
        async with Poller(timeout=3, rest_lock=lambda p: PhoneRestLock(dead_store, p.mac, "collector", wait=1)) as poller:
            return await poller.poll_one(_uc5(server.port), CREDS)

    result = asyncio.run(poll())
    assert not result.ok and "unavailable" in result.error, result
    assert seen == [], "nothing may reach the phone without its lock"


def test_a_call_check_with_the_store_away_is_unknown(dead_store, answering):
    server = answering(lambda h: None)
    check = control(PhoneAccess(_uc5(server.port), CREDS, store=dead_store)).call_check()
    assert check.state == "unknown" and "unavailable" in check.reason, check


# ------------------------------------------------------------------ a request longer than the lock's TTL
def test_the_lock_is_held_for_a_request_that_outlives_its_ttl(store, answering):
    body = b'{"data": [], "Status": "2000"}'
    holders: list = []

    def respond(h: BaseHTTPRequestHandler) -> None:
        _head(h, len(body))
        for byte in body[:-1]:               # the answer takes ~3 s, five lock TTLs, within the request's budget
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.1)
        holders.append(store.phone_lock_holder(MAC))    # who holds the phone as the answer ends
        h.wfile.write(body[-1:])

    server = answering(respond)
    guard = lambda: PhoneRestLock(store, MAC, owner="control", ttl=0.6)   # noqa: E731
    phone = rest.RestPhone(_uc5(server.port), CREDS, timeout=2.0, firmware="5.8.0", guard=guard)
    assert phone.call_status().in_call is False
    assert holders and holders[0] and holders[0].startswith("control:"), \
        f"the lock lapsed mid-request (holder at the end: {holders})"
    assert store.phone_lock_holder(MAC) is None, "released after the request"


def test_a_held_lock_keeps_others_out_past_its_ttl(store):
    with PhoneRestLock(store, MAC, owner="first", ttl=0.6) as first:
        time.sleep(2.0)                          # over three TTLs
        with pytest.raises(DeviceTimeout, match="first"):
            with PhoneRestLock(store, MAC, owner="second", wait=0.3):
                pass
        assert store.phone_lock_holder(MAC) == first.holder
    assert store.phone_lock_holder(MAC) is None


def test_one_keeper_thread_renews_every_held_lock_and_forgets_released_ones(store):
    """Several locks held past their TTL at once stay held, renewed by one thread of the process (not a thread per
    request: bench/rest_lock.py), and a released lock is no longer renewed."""
    import threading

    from fleet.state.lease import KEEPER

    macs = [f"0004f2abce{k:02x}" for k in range(3)]
    store.r.delete(*[Keys.rest_lock(m) for m in macs], *[Keys.rest_queue(m) for m in macs])
    before = {t.ident for t in threading.enumerate()}
    locks = [PhoneRestLock(store, m, owner="keeper-test", ttl=0.6) for m in macs]
    for lock in locks:
        lock.__enter__()
    try:
        time.sleep(2.0)                          # over three TTLs
        held = [store.phone_lock_holder(m) for m in macs]
        assert held == [lock.holder for lock in locks], f"a lock lapsed while held: {held}"
        started = [t.name for t in threading.enumerate() if t.ident not in before]
        assert len([n for n in started if "rest lock" in n]) <= 1, started
    finally:
        for lock in locks:
            lock.__exit__(None, None, None)
    assert KEEPER.held() == 0
    assert [store.phone_lock_holder(m) for m in macs] == [None, None, None]


def test_the_keeper_goes_on_renewing_after_a_renewal_fails(store, monkeypatch):
    """A renewal that raises (Redis away, anything) does not stop the keeper: the lock is renewed at the next tick,
    within its TTL."""
    calls = []
    real = Store.renew_phone_locks

    def flaky(self, held):
        calls.append(len(held))
        if len(calls) == 1:
            raise RuntimeError("a renewal that fails")
        return real(self, held)
    monkeypatch.setattr(Store, "renew_phone_locks", flaky)
    with PhoneRestLock(store, MAC, owner="keeper-test", ttl=0.9) as lock:
        time.sleep(2.4)                          # over two TTLs: the first renewal failed, the next ones did not
        assert len(calls) >= 3, calls
        assert store.phone_lock_holder(MAC) == lock.holder, "the lock lapsed after one failed renewal"
        assert not lock.lost.is_set()


def test_a_forked_child_renews_its_own_locks(store, redis_url):
    """A prefork worker's child (the parent's keeper thread does not survive fork): its first lock starts a keeper
    of its own, so a lock it holds past the TTL stays held."""
    import multiprocessing

    with PhoneRestLock(store, "0004f2abcf01", owner="parent", ttl=0.6):
        pass                                     # the parent's keeper runs now
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()

    def child() -> None:
        from fleet.state.store import Store as ChildStore

        mine = ChildStore(redis_url)
        with PhoneRestLock(mine, MAC, owner="child", ttl=0.6) as lock:
            time.sleep(2.0)                      # over three TTLs
            result.put((mine.phone_lock_holder(MAC) == lock.holder, lock.lost.is_set()))
    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    proc.join(20)
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 0, f"the child exited {proc.exitcode} (None: still running after 20 s, killed)"
    held, lost = result.get(timeout=5)
    assert held and not lost, "the child's lock lapsed: no keeper renewed it after the fork"


def test_a_lock_taken_away_while_held_is_marked_lost(store):
    lock = PhoneRestLock(store, MAC, owner="keeper-test", ttl=0.6)
    with lock:
        store.r.delete(Keys.rest_lock(MAC))      # Redis lost it (a restart without persistence)
        deadline = time.monotonic() + 3.0
        while not lock.lost.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.lost.is_set(), "the keeper's renewal did not notice the lock was gone"
        assert store.phone_lock_holder(MAC) is None, "a renewal must not take back a lock that was gone"


# ------------------------------------------------------------------ every REST sender holds the lock
def test_the_experiments_dial_holds_the_phones_lock(store, answering, monkeypatch):
    seen: list = []
    server = answering(_answer_with_holder(store, "rest-dial", seen))
    phone = _uc5(server.port)
    inv = SimpleNamespace(phone=lambda mac: (None, phone))
    secrets = SimpleNamespace(credentials=lambda name: CREDS)
    monkeypatch.setattr(call_work, "context", lambda: (inv, secrets))
    monkeypatch.setattr(call_work, "stores", lambda: (store, None))
    call_work.place_call(MAC, "1002")
    assert seen and seen[0][0] == "/api/v1/callctrl/dial", seen
    assert seen[0][1] and seen[0][1].startswith("experiment:"), f"the dial was sent without the lock: {seen}"


def test_the_probe_holds_the_phones_lock(store, answering):
    seen: list = []
    server = answering(_answer_with_holder(store, "rest-device-info-5.7", seen))
    phone = _uc5(server.port)
    site = SimpleNamespace(name="probe-site", phones=[phone])
    inv = SimpleNamespace(phone=lambda mac: (site, phone), effective_params=lambda s, p: {})
    secrets = SimpleNamespace(credentials=lambda name: CREDS, resolve_param=lambda name, value: value)
    row = site_probe.check_phone(site, phone, inv, secrets, 3.0, store)
    assert seen and seen[0][0] == "/api/v1/mgmt/device/info", seen
    assert seen[0][1] and seen[0][1].startswith("control:"), f"the probe read the phone without the lock: {seen}"
    assert row.device == f"phone {MAC}"


# ------------------------------------------------------------------ pushed call state across two hosts' clocks
def _sip3(port: int) -> Phone:
    return Phone(mac=MAC, model="SoundPoint IP 650", address="127.0.0.1", http_port=port, credentials="admin",
                 firmware_family="sip-3.x", http_auth="digest")


def _pushing(store: Store, skew: float | None):
    """A push-mode phone: answers the poll with an empty 200 and (unless `skew` is None) pushes its state, which
    the collector stores stamped by its own clock, `skew` seconds off the worker's."""
    def respond(h: BaseHTTPRequestHandler) -> None:
        if skew is not None:
            store.record_pushed_call_state(MAC, True, time.time() + skew)
        _head(h, 0, "text/xml")
    return respond


@pytest.mark.parametrize("skew", [-60.0, 60.0])
def test_a_push_after_the_request_is_taken_whatever_the_collectors_clock(store, answering, skew):
    server = answering(_pushing(store, skew))
    check = polling.pushed_call_state(_sip3(server.port), CREDS, store, timeout=2, wait=3)
    assert (check.state, check.reason) == ("in-call", "pushed state")


def test_a_push_from_before_the_request_is_not_taken_though_the_collectors_clock_is_ahead(store, answering):
    store.record_pushed_call_state(MAC, False, time.time() + 60)    # old news, stamped by a clock a minute ahead
    server = answering(_pushing(store, None))                      # the phone pushes nothing new
    with pytest.raises(DeviceTimeout, match="no state pushed"):
        polling.pushed_call_state(_sip3(server.port), CREDS, store, timeout=2, wait=1)


def test_pushes_are_counted_per_phone(store):
    assert store.pushed_call_state(MAC) is None
    assert store.record_pushed_call_state(MAC, True, 100.0) == 1
    assert store.record_pushed_call_state(MAC, False, 50.0) == 2
    assert tuple(store.pushed_call_state(MAC)) == (False, 50.0, 2)


def test_a_holder_that_frees_and_retakes_the_lock_at_once_cannot_keep_a_waiter_out(store):
    """A poller that lets go of the phone and takes it again straight away (its next lineInfo is due) used to
    keep a worker's request out for its whole wait (CI: `held the phone for over 20s`); the waiter queues and
    gets in at the poller's next release."""
    import threading

    stop, got, poller_turns = threading.Event(), [], [0]

    def greedy_poller() -> None:
        while not stop.is_set():
            try:
                with PhoneRestLock(store, MAC, owner="collector:hq", wait=5):
                    poller_turns[0] += 1
                    time.sleep(0.05)                    # its request; then at once the next one
            except DeviceTimeout:
                pass

    thread = threading.Thread(target=greedy_poller, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while poller_turns[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert poller_turns[0] > 0, "the poller never took the phone"
        for _ in range(5):
            asked = time.monotonic()
            with PhoneRestLock(store, MAC, owner="control", wait=3):
                got.append(time.monotonic() - asked)
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert len(got) == 5 and max(got) < 3, got
    assert poller_turns[0] >= 5, poller_turns       # and the poller had its turns in between (4 at least)
    assert store.r.pttl(Keys.rest_queue(MAC)) <= 1000      # nobody waits, or the queue lapses within a second
