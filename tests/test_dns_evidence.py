"""Issue 17, point 9: a phone's failed DNS lookup of a server's name, on the wire, is evidence it lost that server.

Unit tests of fleet.evidence.wire.dns and of its use by the capture pipeline (WireEvidence), with
DNS messages built by dnslib and SIP built by sipwire: no lab. The capture's filter must take the site's DNS."""
from __future__ import annotations

import struct
import time

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from fleet.evidence.wire import dns as de
from fleet.config import platforms
from fleet.evidence.wire.pcap import capture_command
from fleet.evidence.wire.attribution import Attribution, WireTarget
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.state.observe import REGISTERED, UNREGISTERED
from sipwire import message as sip

MAC, OTHER = "0004f2000001", "0004f2000002"
PHONE, PHONE2, STRANGER = "10.0.0.21", "10.0.0.22", "10.0.0.99"
DNS = ("10.0.0.1", 5353)
PROVIDER, GATEWAY = ("203.0.113.10", 5060), ("10.0.0.1", 5060)
NAME = "voip.provider.example"


def _targets() -> list[WireTarget]:
    return [WireTarget(MAC, 1, 1, PROVIDER, "1001", phone_ip=PHONE, uri_host=NAME),
            WireTarget(MAC, 1, 2, GATEWAY, "1001", phone_ip=PHONE, uri_host="10.0.0.1"),
            WireTarget(OTHER, 1, 1, PROVIDER, "1002", phone_ip=PHONE2, uri_host=NAME)]


def _query(ident: int, name: str = NAME, qtype: str = "A") -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = ident
    return q.pack()


def _answer(ident: int, rcode: int = RCODE.NOERROR, name: str = NAME) -> bytes:
    q = DNSRecord.question(name, "A")
    q.header.id = ident
    reply = q.reply()
    reply.header.rcode = rcode
    if rcode == RCODE.NOERROR:
        reply.add_answer(RR(name, QTYPE.A, rdata=A(PROVIDER[0]), ttl=2))
    return reply.pack()


def test_parse_reads_the_question_and_refuses_what_is_not_dns():
    msg = de.parse(_query(7, "_sip._udp.VOIP.provider.example", "SRV"))
    assert msg == de.DnsMessage(7, False, 0, 0, "_sip._udp.voip.provider.example", QTYPE.SRV)
    assert de.server_name(msg.qname) == NAME
    answer = de.parse(_answer(7, RCODE.SERVFAIL))
    assert answer.response and answer.rcode == 2
    assert de.parse(b"") is None and de.parse(b"\x00" * 11) is None
    # a name that points at itself (a loop) and one that points forward are refused, not followed
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    assert de.parse(header + b"\xc0\x0c" + b"\x00\x01\x00\x01") is None
    assert de.parse(header + b"\xc0\x20" + b"\x00" * 40) is None
    assert de.parse(header + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01") is None   # over 255 octets


def test_parse_is_linear_on_a_hostile_message():
    header = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0)
    chain = b"".join(struct.pack("!BB", 0xC0 | ((12 + 2 * i) >> 8), (12 + 2 * i) & 0xFF) for i in range(30000))
    assert de.parse(header + b"\x00" + chain) is not None      # the question is the root name; the rest unread
    assert de.parse(header + b"\x01a" * 20000) is None          # labels past 255 octets: refused at once


@pytest.mark.parametrize("rcode, word", [(RCODE.SERVFAIL, "SERVFAIL"), (RCODE.NXDOMAIN, "NXDOMAIN")])
def test_a_failure_answer_is_the_loss_of_that_server_for_that_phone_at_that_moment(rcode, word):
    dns = de.DnsLookups(_targets(), ports=(5353,))
    assert dns.feed(100.0, (PHONE, 40000), DNS, _query(11)) == []
    [obs] = dns.feed(100.2, DNS, (PHONE, 40000), _answer(11, rcode))
    assert (obs.mac, obs.reg, obs.server, obs.state, obs.t, obs.earliest) == (MAC, 1, 1, UNREGISTERED, 100.2, None)
    assert word in obs.detail and NAME in obs.detail


def test_no_answer_bounds_the_moment_between_the_last_try_and_the_wait():
    dns = de.DnsLookups(_targets(), ports=(5353,), wait=3.0)
    dns.feed(100.0, (PHONE, 40000), DNS, _query(11))
    dns.feed(101.0, (PHONE, 40001), DNS, _query(12))     # the phone's retry: one lookup
    assert dns.expire(103.5) == []
    [obs] = dns.expire(104.0)
    assert (obs.mac, obs.server, obs.state, obs.earliest, obs.t) == (MAC, 1, UNREGISTERED, 101.0, 104.0)
    assert "2 tries" in obs.detail
    assert dns.expire(200.0) == []                        # reported once


def test_an_answer_clears_the_lookup_and_only_the_asked_server_may_answer():
    dns = de.DnsLookups(_targets(), ports=(5353,))
    dns.feed(100.0, (PHONE, 40000), DNS, _query(11))
    assert dns.feed(100.1, (STRANGER, 5353), (PHONE, 40000), _answer(11, RCODE.SERVFAIL)) == []   # forged: ignored
    assert dns.feed(100.2, DNS, (PHONE, 40000), _answer(11)) == []
    assert dns.expire(200.0) == [] and dns.stats["dns_answered"] == 1 and dns.stats["dns_unmatched_answers"] == 1


def test_a_lookup_is_attributed_only_to_the_phone_that_sent_it():
    dns = de.DnsLookups(_targets(), ports=(5353,))
    dns.feed(100.0, (STRANGER, 40000), DNS, _query(11))            # nobody's phone
    dns.feed(100.0, (PHONE, 40000), DNS, _query(12, "other.example"))   # not a server's name
    assert dns.feed(100.1, DNS, (STRANGER, 40000), _answer(11, RCODE.SERVFAIL)) == []
    assert dns.expire(200.0) == []
    dns.feed(100.0, (PHONE2, 40000), DNS, _query(13))
    [obs] = dns.feed(100.1, DNS, (PHONE2, 40000), _answer(13, RCODE.NXDOMAIN))
    assert obs.mac == OTHER and obs.address == PHONE2
    assert dns.stats["dns_other_queries"] == 2


def test_only_the_address_lookup_counts():
    """A site without SRV records answers the phone's SRV question NXDOMAIN at every lookup: that is no loss; an A
    answer without an address is."""
    dns = de.DnsLookups(_targets(), ports=(5353,))
    dns.feed(100.0, (PHONE, 40000), DNS, _query(11, "_sip._udp." + NAME, "SRV"))
    srv_nx = DNSRecord.parse(_query(11, "_sip._udp." + NAME, "SRV")).reply()
    srv_nx.header.rcode = RCODE.NXDOMAIN
    assert dns.feed(100.1, DNS, (PHONE, 40000), srv_nx.pack()) == [] and dns.expire(200.0) == []
    dns.feed(100.2, (PHONE, 40000), DNS, _query(12))
    empty = DNSRecord.parse(_query(12)).reply()
    [obs] = dns.feed(100.3, DNS, (PHONE, 40000), empty.pack())
    assert obs.server == 1 and "no address" in obs.detail and dns.stats["dns_not_a"] == 2


def test_pending_lookups_are_bounded():
    dns = de.DnsLookups([WireTarget(f"m{i}", 1, 1, PROVIDER, "", phone_ip=f"10.1.{i // 250}.{i % 250}", uri_host=NAME)
                         for i in range(50)], max_pending=10)
    for i in range(50):
        dns.feed(100.0, (f"10.1.{i // 250}.{i % 250}", 40000), DNS, _query(i))
    assert len(dns._lookups) == 10 and dns.stats["dns_evicted"] == 40


def _datagram_frames(ev: WireEvidence, t: float, src, dst, payload: bytes):
    from fleet.evidence.wire.decode import Datagram

    return ev.feed_datagram(Datagram(t, src, dst, payload))


def test_the_capture_pipeline_sees_the_lookup_fail_before_the_binding_lapses():
    """The demo's blind spot: a phone whose lookup of the provider fails sends no REGISTER; without DNS the
    wire shows the loss only when the binding lapses (t + expires); with it, when the lookup failed."""
    ev = WireEvidence(Attribution(_targets()), lapse=True)
    ev.dns = de.DnsLookups(_targets(), ports=(5353,), wait=3.0)
    req = sip.make_request("REGISTER", f"sip:{NAME}", local=(PHONE, 5060), from_uri=f"sip:1001@{NAME}",
                           to_uri=f"sip:1001@{NAME}", call_id="c1", cseq=1, from_tag="t1",
                           contact=f"<sip:1001@{PHONE}:5060>", extra=[("Expires", "12")])
    ok = sip.make_response(req, 200, "OK", extra=[("Expires", "12")])
    assert _datagram_frames(ev, 100.0, (PHONE, 5060), PROVIDER, req.encode()) == []
    [reg] = _datagram_frames(ev, 100.1, PROVIDER, (PHONE, 5060), ok.encode())
    assert reg.state == REGISTERED and reg.server == 1
    _datagram_frames(ev, 105.0, (PHONE, 40000), DNS, _query(21))
    _datagram_frames(ev, 106.0, (PHONE, 40001), DNS, _query(22))
    lost = ev.tick(109.0)
    assert [(o.server, o.state, o.earliest, o.t, o.source) for o in lost] == [(1, UNREGISTERED, 106.0, 109.0, "wire")]
    assert ev.stats["dns_unanswered"] == 1 and ev.stats["dns_queries"] == 2


def test_the_capture_filter_takes_the_sites_dns():
    from fleet.evidence.sources.local_capture import local_capture_argv

    ports = tuple(sorted({5060} | set(de.site_dns_ports("10.0.0.1:5353"))))
    assert ports == (53, 5060, 5353) and de.site_dns_ports(None) == (53,)
    cmd = capture_command(platforms.get("linux_ssh").capture_template(), "lan0", ports)
    assert "port 53 " in cmd and "port 5353" in cmd and "port 5060" in cmd
    assert "port 53 " in local_capture_argv("eth1", ports)[-1]


def test_the_router_capture_command_includes_dns():
    """The router capture source's command (what runs over SSH) lets the site's DNS through."""
    from fleet.evidence.sources.router_capture import RouterCapture
    from fleet.evidence.sources.targets import Targets
    from fleet.config.inventory import Capture, Credentials, Site

    site = Site.model_validate({"name": "hq", "gateway": "10.0.0.1", "dns": "10.0.0.1:5353",
                                "boot_server": {"url": "http://10.0.0.3/"},
                                "router": {"driver": "linux_ssh", "address": "10.0.0.1", "credentials": "r",
                                           "wan_interface": "wan0"}})
    targets = Targets(site, lambda: {})
    src = RouterCapture(site, None, Capture.model_validate("router lan0"), targets, Credentials())
    cmd = src.command()
    assert "port 5353" in cmd and "port 53 " in cmd, cmd


@pytest.mark.parametrize("entry", [e for e in __import__("soundpoint.conformance", fromlist=["select"]).select(area="dns")
                                   if e.id.startswith("dns-lookup-")], ids=lambda e: e.id)
def test_every_failure_answer_in_the_corpus_is_the_loss_of_the_server(entry):
    """The site DNS server's failure answers as the corpus has them (RFC 1035's layout), through the decoder."""
    body = bytes.fromhex(entry.body)
    msg = de.parse(body)
    assert msg is not None and msg.response and msg.rcode in de.RCODE_TEXT and de.server_name(msg.qname) == NAME
    dns = de.DnsLookups(_targets(), ports=(5353,))
    dns.feed(100.0, (PHONE, 40000), DNS, _query(msg.id))
    [obs] = dns.feed(100.1, DNS, (PHONE, 40000), body)
    assert (obs.mac, obs.server, obs.state) == (MAC, 1, UNREGISTERED) and de.RCODE_TEXT[msg.rcode] in obs.detail
