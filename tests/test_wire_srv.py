"""Servers located as a DNSnaptr phone locates them (NAPTR, SRV, then A), through the site's DNS server only; the
capture filters follow the ports found; transports a capture cannot see are reported, not guessed. Unit tests:
a dnslib DNS server on 127.0.0.1 (a free port) in a thread, no lab."""
from __future__ import annotations

import socket
import threading

import pytest
from dnslib import NAPTR, QTYPE, RCODE, RR, SRV, A, DNSRecord

from fleet.config import platforms
from fleet.evidence.wire.pcap import capture_command
from fleet.evidence.wire.attribution import NOT_OBSERVABLE, Attribution, WireTarget, targets_for
from fleet.evidence.sources.resolver import SiteResolver
from fleet.evidence.sources.targets import capture_ports


class ZoneServer:
    """A DNS server over UDP on 127.0.0.1: `zone[(name, qtype)]` -> list of rdata; `decoy` sends first, for every
    query, a reply with another id whose A answer is 198.51.100.66 (an answer to someone else's query)."""

    def __init__(self, zone: dict[tuple[str, str], list], decoy: bool = False) -> None:
        self.zone, self.decoy = zone, decoy
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.asked: list[tuple[str, str]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.sock.getsockname()[1]

    def _serve(self) -> None:
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            q = DNSRecord.parse(data)
            name, qtype = str(q.q.qname).rstrip("."), QTYPE[q.q.qtype]
            self.asked.append((name, qtype))
            if self.decoy:
                fake = q.reply()
                fake.header.id = (q.header.id + 1) % 65536
                fake.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("198.51.100.66"), ttl=60))
                self.sock.sendto(fake.pack(), addr)
            reply = q.reply()
            rdatas = self.zone.get((name, qtype))
            if rdatas is None and not any(n == name for n, _ in self.zone):
                reply.header.rcode = RCODE.NXDOMAIN
            for rd in rdatas or ():
                reply.add_answer(RR(q.q.qname, getattr(QTYPE, qtype), rdata=rd, ttl=60))
            self.sock.sendto(reply.pack(), addr)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def zone_server():
    servers: list[ZoneServer] = []

    def start(zone, decoy=False) -> ZoneServer:
        servers.append(ZoneServer(zone, decoy))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


SRV_ZONE = {
    ("_sip._udp.voip.provider.example", "SRV"): [SRV(10, 60, 5080, "sbc-a.provider.example."),
                                                SRV(20, 10, 5070, "sbc-b.provider.example.")],
    ("sbc-a.provider.example", "A"): [A("203.0.113.21")],
    ("sbc-b.provider.example", "A"): [A("203.0.113.22"), A("203.0.113.23")],
    ("voip.provider.example", "A"): [A("203.0.113.10")],
    ("plain.provider.example", "A"): [A("203.0.113.30")],
}
SERVER1 = {"index": 1, "address": "voip.provider.example", "port": 0, "transport": "DNSnaptr", "register": True}


def test_a_name_without_port_is_located_by_srv_through_the_sites_dns(zone_server):
    """SRV _sip._udp.NAME gives one target per SRV host:port (the targets' A records); the capture filter lets
    those ports through. Before: A records of NAME at 5060 only, and the filter dropped 5080/5070."""
    dns = zone_server(SRV_ZONE)
    resolve = SiteResolver(dns.address, timeout=1.0)
    tg = targets_for("0004f2000001", 1, "1001", [SERVER1], resolve)
    assert [(t.address, t.transport) for t in tg] == [
        (("203.0.113.21", 5080), "udp"), (("203.0.113.22", 5070), "udp"), (("203.0.113.23", 5070), "udp")]
    assert ("voip.provider.example", "NAPTR") in dns.asked and ("_sip._udp.voip.provider.example", "SRV") in dns.asked
    assert capture_ports(tg) == (5070, 5080)
    assert "port 5070 or port 5080" in capture_command(platforms.get("linux_ssh").capture_template(), "eth1", capture_ports(tg))
    # an explicit port or UDPOnly with a port: no SRV, the name's A record at that port
    explicit = targets_for("0004f2000001", 1, "1001", [SERVER1 | {"port": 5099}], resolve)
    assert [t.address for t in explicit] == [("203.0.113.10", 5099)]


def test_without_srv_the_name_is_reached_at_its_a_records_and_5060(zone_server):
    dns = zone_server(SRV_ZONE)
    resolve = SiteResolver(dns.address, timeout=1.0)
    server = SERVER1 | {"address": "plain.provider.example", "transport": "UDPOnly"}
    tg = targets_for("0004f2000001", 1, "1001", [server], resolve)
    assert [(t.address, t.transport) for t in tg] == [(("203.0.113.30", 5060), "udp")]
    assert ("plain.provider.example", "NAPTR") not in dns.asked       # UDPOnly: SRV _sip._udp straight away
    assert capture_ports(tg) == (5060,)


def test_naptr_picks_the_transport_and_the_srv_name(zone_server):
    """NAPTR's most preferred SIP service decides: SIP+D2T sends the phone to TCP (which a capture cannot see)."""
    zone = dict(SRV_ZONE) | {
        ("voip.provider.example", "NAPTR"): [
            NAPTR(10, 10, b"s", b"SIP+D2T", b"", "_sip._tcp.voip.provider.example."),
            NAPTR(20, 10, b"s", b"SIP+D2U", b"", "_sip._udp.voip.provider.example.")],
        ("_sip._tcp.voip.provider.example", "SRV"): [SRV(0, 0, 5090, "sbc-a.provider.example.")]}
    dns = zone_server(zone)
    tg = targets_for("0004f2000001", 1, "1001", [SERVER1], SiteResolver(dns.address, timeout=1.0))
    assert [(t.address, t.transport) for t in tg] == [(("203.0.113.21", 5090), "tcp")]
    att = Attribution(tg)
    assert [(u.server, u.reason, u.why.split()[2]) for u in att.unobservable()] == [(1, NOT_OBSERVABLE, "TCP")]
    assert Attribution(tg, "hep").unobservable() == []          # the SIP server's HEP carries TCP


def test_the_resolver_reads_only_the_reply_to_its_own_query(zone_server):
    """A reply with another id (198.51.100.66 here) is not the answer; before, dnslib's send took it."""
    dns = zone_server(SRV_ZONE, decoy=True)
    resolve = SiteResolver(dns.address, timeout=1.0)
    assert resolve("plain.provider.example") == ["203.0.113.30"]
    assert [(ip, port) for ip, port, _ in resolve.locate("voip.provider.example")] == [
        ("203.0.113.21", 5080), ("203.0.113.22", 5070), ("203.0.113.23", 5070)]


def test_no_answer_keeps_what_a_name_located_to_before(zone_server):
    dns = zone_server(SRV_ZONE)
    resolve = SiteResolver(dns.address, timeout=0.3)
    before = resolve.locate("voip.provider.example", "DNSnaptr")
    dns.close()
    assert resolve.locate("voip.provider.example", "DNSnaptr") == before and len(before) == 3


def test_tcp_and_tls_phones_are_unobservable_by_capture_with_a_reason():
    """TCPOnly, TCPpreferred and TLS servers are not matched by a capture and are reported with why; before,
    TCPpreferred counted as UDP and TCPOnly as observable."""
    servers = [{"index": 1, "address": "192.0.2.10", "transport": "TCPpreferred"},
               {"index": 2, "address": "192.0.2.11", "transport": "TCPOnly"},
               {"index": 3, "address": "192.0.2.12", "transport": "TLS"},
               {"index": 4, "address": "192.0.2.13", "transport": "UDPOnly"}]
    tg = targets_for("0004f2000001", 1, "1001", servers, lambda name: [])
    wire = Attribution(tg)
    assert [(u.server, u.address, u.why.split()[2]) for u in wire.unobservable()] == [
        (1, ("192.0.2.10", 5060), "TCP"), (2, ("192.0.2.11", 5060), "TCP"), (3, ("192.0.2.12", 5061), "TLS")]
    assert [u.server for u in Attribution(tg, "hep").unobservable()] == [3]
    assert capture_ports(tg) == (5060,)
    assert wire.unobservable()[0].to_dict() == {"mac": "0004f2000001", "reg": 1, "server": 1,
                                                "address": "192.0.2.10:5060", "reason": NOT_OBSERVABLE,
                                                "why": wire.unobservable()[0].why}


def test_site_unobservable_report_prefers_the_source_that_can_see():
    """With HEP beside a capture, a TCP phone is seen (HEP carries TCP); a TLS one by neither."""
    from fleet.evidence.sources.targets import unobservable

    tg = [WireTarget("0004f2000001", 1, 1, ("192.0.2.10", 5060), transport="tcp"),
          WireTarget("0004f2000001", 1, 2, ("192.0.2.11", 5061), transport="tls"),
          WireTarget("0004f2000002", 1, 1, ("192.0.2.10", 5060))]
    assert [(u["mac"], u["server"]) for u in unobservable(tg, {"wire"})] == [("0004f2000001", 1), ("0004f2000001", 2)]
    both = unobservable(tg, {"wire", "hep"})
    assert [(u["server"], u["reason"], u["why"]) for u in both] == [(2, NOT_OBSERVABLE, "registers over TLS (encrypted)")]


def test_fleet_status_shows_unobservable_servers_and_failing_sources(redis_url):
    """What the collector reports (Store.set_site_evidence) reaches `fleet status --json` per phone and the table:
    the phone's unobservable servers with why, and per site the failing evidence source, since when and why."""
    import json
    import time

    from rich.console import Console

    from fleet.evidence.status import view
    from fleet.state.store import Store

    store = Store(redis_url)
    macs = ["0004f2aa0001", "0004f2aa0002"]
    store.forget_phones(macs)
    store.register_phones("srvsite", [{"mac": m, "model": "SoundPoint IP 650",
                                       "servers": [{"index": 1, "address": "192.0.2.10", "register": True},
                                                   {"index": 2, "address": "192.0.2.11", "register": True}]}
                                      for m in macs])
    unseen = {"mac": macs[0], "reg": 1, "server": 2, "address": "192.0.2.11:5061", "reason": NOT_OBSERVABLE,
              "why": "registers over TLS (encrypted)"}
    failing = {"source": "gateway bindings", "running": False, "since": time.time() - 300,
               "error": "GatewayOutputError: Kamailio refused the ul.dump answer as too big"}
    store.set_site_evidence("srvsite", [unseen], [failing, {"source": "hep", "running": True, "error": "", "since": None}])
    rows = {r["mac"]: r for r in json.loads(store.status_json("srvsite"))}
    assert rows[macs[0]]["unobservable"] == [unseen] and rows[macs[1]]["unobservable"] == []
    assert rows[macs[1]]["evidence_errors"] == [failing]
    assert rows[macs[0]]["servers"][0]["index"] == 1          # the ready-made row is intact
    phones = store.phones("srvsite")
    console = Console(width=250, record=True)
    console.print(view(phones, store.site_evidence(["srvsite"])))
    text = console.export_text()
    assert "2: not observable on the wire (registers over TLS (encrypted))" in text, text
    assert "gateway bindings" in text and "5m ago" in text and "too big" in text, text
    store.forget_phones(macs)


def test_hep_senders_named_by_the_gateway_resolve_through_the_sites_dns(zone_server):
    """A gateway given as a name is resolved by the site's DNS server, never this host's resolver."""
    from fleet.evidence.sources.hep_source import hep_senders
    from fleet.config.inventory import Capture, Inventory

    dns = zone_server({("gw.site.example", "A"): [A("192.0.2.1")]})
    site = Inventory.model_validate({"name": "h", "sites": [{
        "name": "h", "gateway": "gw.site.example", "dns": dns.address, "boot_server": {"url": "file:///x"},
        "phones": []}]}).sites[0]
    assert hep_senders(site, Capture(kind="hep", listen="127.0.0.1:9060")) == ["192.0.2.1"]
    assert dns.asked == [("gw.site.example", "A")]


def test_a_capture_restarts_when_its_targets_move_to_other_ports():
    """DNS (a new SRV port) or a rollout moves a server: the running capture's filter would drop its packets, so the
    read loop ends with True (the source restarts with the new filter) instead of reading on."""
    import io
    import struct

    from fleet.evidence.sources.base import Sink
    from fleet.evidence.sources.local_capture import LocalCapture
    from fleet.evidence.sources.targets import Targets, capture_ports
    from fleet.config.inventory import Capture, Inventory

    mac = "0004f2000001"
    params = {"reg.1.address": "1001", "reg.1.server.1.address": "10.0.0.5", "reg.1.server.1.port": "5060"}
    site = Inventory.model_validate({"name": "x", "sites": [{
        "name": "a", "gateway": "10.0.0.1", "boot_server": {"url": "file:///x"},
        "phones": [{"mac": mac, "model": "VVX 410", "address": "10.0.0.20", "credentials": "c"}]}]}).sites[0]
    current = dict(params)
    targets = Targets(site, lambda: {mac: dict(current)})
    src = LocalCapture(site, Sink(lambda o: None, lambda s, d: None),
                                    Capture(kind="interface", interface="eth0"), targets)
    targets.refresh(force=True)
    src.ports = capture_ports(targets.wire)
    assert src.ports == (5060,)
    calls = []

    def read(timeout: float):
        calls.append(timeout)
        if len(calls) == 1:
            return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        if len(calls) == 3:
            current["reg.1.server.1.port"] = "5080"
            targets.refresh(force=True)
        return None if len(calls) > 20 else b""

    assert src.pump(read) is True and len(calls) < 10, calls
    assert capture_ports(targets.wire) == (5080,)


def test_a_targets_rebuild_asks_each_name_once_even_while_dns_does_not_answer():
    """Twenty phones share the provider's name: one rebuild asks the site's DNS once for it (a silent DNS
    server, as in an outage, would otherwise cost the timeout twenty times over on the capture thread); the next
    rebuild asks again."""
    from fleet.evidence.sources.resolver import SiteResolver
    from fleet.evidence.sources.targets import Targets
    from fleet.config.inventory import Inventory

    macs = [f"0004f20000{i:02x}" for i in range(20)]
    site = Inventory.model_validate({"name": "x", "sites": [{
        "name": "a", "gateway": "10.0.0.1", "boot_server": {"url": "file:///x"}, "dns": "127.0.0.1:9",
        "phones": [{"mac": m, "model": "VVX 410", "address": f"10.0.0.{20 + i}", "credentials": "c"}
                   for i, m in enumerate(macs)]}]}).sites[0]
    params = {m: {"reg.1.address": f"10{i:02d}", "reg.1.server.1.address": "voip.provider.example",
                  "reg.1.server.2.address": "10.0.0.1"} for i, m in enumerate(macs)}
    asked: list[str] = []

    class SilentDns(SiteResolver):
        def _locate(self, name, transport):
            asked.append(name)
            return None                      # no answer

    targets = Targets(site, lambda: params)
    targets.resolve = SilentDns(site.dns)
    assert targets.refresh(force=True)
    assert asked == ["voip.provider.example"], asked
    assert {t.server for t in targets.wire} == {2} and len(targets.wire) == 20
    targets.refresh(force=True)
    assert asked == ["voip.provider.example"] * 2, asked
