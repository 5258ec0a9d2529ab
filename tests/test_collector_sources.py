"""Collectors listen where the inventory says and believe only the site's phones.

A real collector (its own thread, real UDP and HTTP sockets on loopback) and a
real Redis: reports sent from a loopback address that is not one of the site's
phones are dropped, the same reports from the phone's own address are recorded.
"""
from __future__ import annotations

import http.client
import socket

import pytest

from conftest import free_port, wait_until
from fleet.evidence.collector import CollectorError, SiteCollector
from fleet.config.inventory import Inventory
from fleet.state.sites import register_site
from fleet.state.store import Store
from hil import phone_reports

PHONE_A, PHONE_B = "0004f2a0a001", "0004f2a0a002"
ADDR_A, ADDR_B = "127.77.0.2", "127.77.0.3"
STRANGER = "127.77.0.9"          # loopback, but not a phone of the site
ALLOWED_NET_HOST = "127.78.5.5"  # not a phone, but inside collector.allow_from


def _inventory(syslog: str, events: str, allow_from: list[str] | None = None) -> Inventory:
    phone = {"model": "VVX 410", "credentials": "admin", "params": {"reg.1.server.1.address": "10.0.0.1"}}
    return Inventory.model_validate({
        "name": "sources", "firmware_family": "uc-5.x",
        "sites": [{"name": "src", "gateway": "127.77.0.1", "boot_server": {"url": "file:///nonexistent"},
                   "collector": {"syslog": syslog, "events": events, "allow_from": allow_from or []},
                   "phones": [dict(phone, mac=PHONE_A, address=ADDR_A), dict(phone, mac=PHONE_B, address=ADDR_B)]}]})


@pytest.fixture
def collector(redis_url):
    syslog, events = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    inv = _inventory(syslog, events, ["127.78.5.0/24"])
    store = Store(redis_url)
    store.forget_phones([PHONE_A, PHONE_B])
    site = inv.sites[0]
    register_site(store, inv, site)
    c = SiteCollector(site, store)
    c.start()
    yield c, store, syslog, events
    c.stop()


def _send_syslog(source: str, target: str, payload: bytes) -> None:
    host, port = target.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.sendto(payload, (host, int(port)))


def _post_event(source: str, target: str, payload: bytes) -> int:
    host, port = target.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5, source_address=(source, 0))
    try:
        conn.request("POST", "/events", body=payload, headers={"Content-Type": "application/xml"})
        return conn.getresponse().status
    finally:
        conn.close()


def _wait_for(store: Store, mac: str, timeout: float = 10.0):
    return wait_until(lambda: (state := store.phone_state(mac)).observed_at is not None and state, timeout,
                      f"an observation of {mac}", step=0.05, state=lambda: store.phone_state(mac).to_dict())


def test_syslog_from_a_stranger_is_dropped_and_from_the_phone_recorded(collector):
    c, store, syslog, _ = collector
    # the stranger claims phone A registered; sent first, on the same socket path as the phone's own report
    _send_syslog(STRANGER, syslog, phone_reports.syslog_registration(PHONE_A, ADDR_A, 1, 1, "10.0.0.1:5060", True, 60))
    _send_syslog(ADDR_B, syslog, phone_reports.syslog_registration(PHONE_B, ADDR_B, 1, 1, "10.0.0.1:5060", True, 60))
    state_b = _wait_for(store, PHONE_B)
    assert state_b.working_server == 1, state_b.to_dict()
    # B's report was recorded, so the earlier datagram was handled too: it must have been dropped
    state_a = store.phone_state(PHONE_A)
    assert state_a.observed_at is None and state_a.servers == {}, state_a.to_dict()
    assert c.sources.dropped >= 1


def test_events_from_a_stranger_are_refused_and_from_the_phone_recorded(collector):
    c, store, _, events = collector
    body = phone_reports.line_event("LineRegistrationEvent", PHONE_A, ADDR_A, 1)
    assert _post_event(STRANGER, events, body) == 403
    assert store.phone_state(PHONE_A).observed_at is None
    assert _post_event(ADDR_A, events, body) == 200
    state = _wait_for(store, PHONE_A)
    assert state.last_source == "event", state.to_dict()


def test_a_phone_cannot_report_for_another(collector):
    c, store, syslog, events = collector
    # phone B's address claims phone A registered, by syslog and by event; then B reports for itself
    _send_syslog(ADDR_B, syslog, phone_reports.syslog_registration(PHONE_A, ADDR_A, 1, 1, "10.0.0.1:5060", True, 60))
    assert _post_event(ADDR_B, events, phone_reports.line_event("LineRegistrationEvent", PHONE_A, ADDR_A, 1)) == 403
    _send_syslog(ADDR_B, syslog, phone_reports.syslog_registration(PHONE_B, ADDR_B, 1, 1, "10.0.0.1:5060", True, 60))
    assert _wait_for(store, PHONE_B).working_server == 1
    state_a = store.phone_state(PHONE_A)
    assert state_a.observed_at is None, state_a.to_dict()


def test_allow_from_network_is_accepted(collector):
    c, store, syslog, _ = collector
    _send_syslog(ALLOWED_NET_HOST, syslog,
                 phone_reports.syslog_registration(PHONE_B, ADDR_B, 1, 1, "10.0.0.1:5060", True, 60))
    assert _wait_for(store, PHONE_B).working_server == 1


@pytest.mark.parametrize("field", ["syslog", "events"])
@pytest.mark.parametrize("wildcard", ["0.0.0.0", "[::]"])
def test_wildcard_listen_address_is_refused(redis_url, field, wildcard):
    addrs = {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"}
    addrs[field] = f"{wildcard}:{free_port()}"
    site = _inventory(addrs["syslog"], addrs["events"]).sites[0]
    with pytest.raises(CollectorError, match=f"collector.{field}.*name the address"):
        SiteCollector(site, Store(redis_url)).start()


def test_a_stopped_collector_has_let_go_of_its_ports_when_stop_returns(redis_url):
    """A worker started next for the site binds the same syslog and events ports at once (two test suites side by
    side saw "Address already in use": the stopped collector's sockets waited for the garbage collector); and
    one whose events port is taken does not keep its syslog port either."""
    syslog_port, events_port = free_port(), free_port()
    inv = _inventory(f"127.0.0.1:{syslog_port}", f"127.0.0.1:{events_port}")
    store = Store(redis_url)
    register_site(store, inv, inv.sites[0])
    for _ in range(3):
        c = SiteCollector(inv.sites[0], store)
        c.start()
        c.stop()
        assert not c.thread.is_alive()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", syslog_port))
            tcp.bind(("127.0.0.1", events_port))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", events_port))
        taken.listen()
        with pytest.raises(CollectorError, match="cannot listen"):
            SiteCollector(inv.sites[0], store).start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", syslog_port))
