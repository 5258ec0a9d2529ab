"""Wire and gateway evidence (issue 10): pcap and HEP decoding, REGISTER transactions, attribution, bindings.

Captures are built here with dpkt and our pcap writer; the Kamailio samples in
tests/data/wire are real output of Kamailio 5.6 (see the README there).
"""
from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import await_until, wait_until
from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.wire import hep
from fleet.evidence.sources.hep_listener import HepListener, start_hep_listener
from fleet.evidence.sources.local_capture import CaptureUnavailable, check_capture, local_capture_argv
from fleet.config import platforms
from fleet.evidence.wire.pcap import PcapFormatError, PcapStreamParser, PcapWriter, capture_command, iter_pcap
from fleet.evidence.wire.transactions import FINAL, INTERIM
from fleet.evidence.wire.decode import (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
                                               LINKTYPE_RAW, Datagram, FrameDecoder, register_message)
from fleet.evidence.wire.attribution import (NOT_OBSERVABLE, Attribution, WireTarget, detail_fields)
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.state.observe import REGISTERED, UNREGISTERED

DATA = Path(__file__).parent / "data" / "wire"
PROVIDER = ("203.0.113.10", 5060)
GATEWAY = ("192.168.10.1", 5060)
T0 = 1_795_700_000.0


# --- builders ----------------------------------------------------------------------------------------------

def register(user: str, phone: tuple[str, int], server: tuple[str, int] = PROVIDER, *, cseq: int = 1,
             call_id: str | None = None, branch: str | None = None, expires: int | None = 3600,
             contact_expires: int | None = None, auth: bool = False, contact_user: str | None = None) -> bytes:
    call_id = call_id or f"cid-{user}-{phone[1]}@{phone[0]}"
    branch = branch or f"z9hG4bK-{user}-{cseq}-{phone[1]}"
    cu = contact_user or user
    contact = f"<sip:{cu}@{phone[0]}:{phone[1]}>" + (f";expires={contact_expires}" if contact_expires is not None else "")
    lines = [f"REGISTER sip:{server[0]} SIP/2.0",
             f"Via: SIP/2.0/UDP {phone[0]}:{phone[1]};branch={branch};rport",
             "Max-Forwards: 70",
             f"From: <sip:{user}@{server[0]}>;tag=t{user}",
             f"To: <sip:{user}@{server[0]}>",
             f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", f"Contact: {contact}",
             "User-Agent: PolycomSoundPointIP-SPIP_550-UA/3.3.5.0247"]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if auth:
        lines.append(f'Authorization: Digest username="{user}", realm="x", nonce="n", uri="sip:{server[0]}", '
                     'response="00000000000000000000000000000000"')
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def response(request: bytes, code: int, reason: str = "OK", *, contacts: list[str] | None = None,
             expires: int | None = None, challenge: str | None = None, pad_contacts: int = 0) -> bytes:
    req = request.decode()
    head = req.split("\r\n\r\n")[0].split("\r\n")[1:]
    keep = [h for h in head if h.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq")]
    keep = [h + ";tag=srv" if h.startswith("To:") else h for h in keep]
    lines = [f"SIP/2.0 {code} {reason}", *keep]
    for c in contacts or []:
        lines.append(f"Contact: {c}")
    for i in range(pad_contacts):        # other devices' bindings of the same AoR make a large answer
        lines.append(f"Contact: <sip:other{i}@198.51.100.{i % 250}:5060;line=abcdefgh{i}>;expires=3600")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if challenge:
        lines.append(f"WWW-Authenticate: {challenge}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def udp_ip(src: tuple[str, int], dst: tuple[str, int], payload: bytes, ident: int = 1) -> dpkt.ip.IP:
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=17, id=ident, data=udp)
    ip.len = 20 + len(bytes(udp))
    return ip


def eth(src: tuple[str, int], dst: tuple[str, int], payload: bytes, vlan: int | None = None) -> bytes:
    ip = udp_ip(src, dst, payload)
    frame = dpkt.ethernet.Ethernet(src=b"\x00\x04\xf2\x00\x00\x01", dst=b"\x00\x00\x5e\x00\x01\x01",
                                   type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    raw = bytes(frame)
    if vlan is not None:      # 802.1Q tag between the MACs and the ethertype
        raw = raw[:12] + struct.pack("!HH", 0x8100, vlan) + raw[12:]
    return raw


def fragments(src: tuple[str, int], dst: tuple[str, int], payload: bytes, mtu: int = 576, ident: int = 77) -> list[bytes]:
    """IPv4 fragments (raw IP packets) of one UDP datagram, built by hand the way a router cuts them."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    step = (mtu - 20) // 8 * 8
    out = []
    for off in range(0, len(udp), step):
        piece = udp[off:off + step]
        more = off + step < len(udp)
        flags_off = (0x2000 if more else 0) | (off // 8)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), ident, flags_off, 64, 17, 0,
                          socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
        out.append(hdr + piece)
    return out


def pcap(records: list[tuple[float, bytes]], linktype: int = LINKTYPE_ETHERNET) -> bytes:
    buf = io.BytesIO()
    w = PcapWriter(buf, linktype)
    for t, frame in records:
        w.write(t, frame)
    return buf.getvalue()


def targets(*phones: tuple[str, str, str], server: tuple[str, int] = PROVIDER, index: int = 1) -> list[WireTarget]:
    return [WireTarget(mac=mac, reg=1, server=index, address=server, user=user, phone_ip=ip) for mac, user, ip in phones]


PHONE_A = ("0004f2000001", "1001", "192.168.10.21")
PHONE_B = ("0004f2000002", "1002", "192.168.10.22")


def evidence(*phones, server=PROVIDER, timeout: float = 32.0, source: str = "wire") -> WireEvidence:
    ev = WireEvidence(Attribution(targets(*phones, server=server)), source=source, timeout=timeout)
    ev.outcomes = []
    return ev


def run(ev: WireEvidence, packets: list[tuple[float, tuple[str, int], tuple[str, int], bytes]]) -> list:
    """Feed packets through a real pcap byte stream (Ethernet frames), in odd-sized chunks."""
    stream = pcap([(t, eth(s, d, p)) for t, s, d, p in packets])
    parser = PcapStreamParser()
    out = []
    for i in range(0, len(stream), 37):
        for rec in parser.feed(stream[i:i + 37]):
            out += ev.feed_frame(rec.t, rec.linktype, rec.frame)
    assert parser.pending == 0
    return out


A_ADDR = ("192.168.10.21", 5060)
B_ADDR = ("192.168.10.22", 5060)


# --- REGISTER outcomes -------------------------------------------------------------------------------------

def test_register_answered_200_is_registered_with_the_expiry_the_registrar_granted():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR, expires=3600)
    ok = response(req, 200, contacts=[f"<sip:1001@{A_ADDR[0]}:{A_ADDR[1]}>;expires=1800"], expires=3600)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, req), (T0 + 0.05, PROVIDER, A_ADDR, ok)])
    assert len(obs) == 1, ev.stats
    o = obs[0]
    assert (o.mac, o.server, o.state, o.source, o.address) == ("0004f2000001", 1, REGISTERED, "wire", "203.0.113.10:5060")
    assert detail_fields(o.detail) == {"code": "200", "expires": "1800"}, "the Contact's expires wins over Expires"
    assert o.t == pytest.approx(T0 + 0.05)


def test_retransmitted_request_and_response_give_one_observation():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    ok = response(req, 200, expires=600)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, req), (T0 + 0.5, A_ADDR, PROVIDER, req), (T0 + 1.5, A_ADDR, PROVIDER, req),
                   (T0 + 1.6, PROVIDER, A_ADDR, ok), (T0 + 1.7, PROVIDER, A_ADDR, ok),
                   (T0 + 3.5, A_ADDR, PROVIDER, req)])
    obs += ev.tick(T0 + 100)
    assert [(o.state, detail_fields(o.detail)["expires"]) for o in obs] == [(REGISTERED, "600")], ev.stats
    assert ev.outcomes[0].retransmissions == 2
    assert ev.stats["duplicate_final"] == 1 and ev.stats["retransmissions_after_final"] == 1
    assert ev.stats.get("timeouts", 0) == 0, "a retransmission after the answer must not open a transaction"


def test_challenge_then_authenticated_register_answered_200_is_registered():
    ev = evidence(PHONE_A)
    r1 = register("1001", A_ADDR, cseq=1, call_id="c1")
    ch = response(r1, 401, "Unauthorized", challenge='Digest realm="x", nonce="abc", algorithm=MD5')
    r2 = register("1001", A_ADDR, cseq=2, call_id="c1", auth=True)
    ok = response(r2, 200, contacts=[f"<sip:1001@{A_ADDR[0]}:{A_ADDR[1]}>;expires=3600"])
    obs = run(ev, [(T0, A_ADDR, PROVIDER, r1), (T0 + 0.01, PROVIDER, A_ADDR, ch)])
    assert obs == [], "a challenge is not an outcome"
    obs = run(ev, [(T0 + 0.02, A_ADDR, PROVIDER, r2), (T0 + 0.03, PROVIDER, A_ADDR, ok)])
    obs += ev.tick(T0 + 100)
    assert [(o.state, detail_fields(o.detail)) for o in obs] == [
        (REGISTERED, {"code": "200", "expires": "3600", "after-challenge": "401"})]
    assert [oc.kind for oc in ev.outcomes] == [INTERIM, FINAL]


def test_403_is_refused_with_its_code():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, req), (T0 + 0.02, PROVIDER, A_ADDR, response(req, 403, "Forbidden"))])
    assert [(o.state, detail_fields(o.detail)["code"]) for o in obs] == [(UNREGISTERED, "403")]
    assert obs[0].detail.startswith("refused")


def test_a_challenge_never_changes_state_even_to_a_request_with_credentials():
    """Issue 17: anyone can draw a 401 for a phone's user (with garbage credentials too); a phone whose password
    is really wrong shows when the binding it had lapses, not from the challenge."""
    ev = evidence(PHONE_A, PHONE_B)
    ra = register("1001", A_ADDR, cseq=2, auth=True)
    rb = register("1002", B_ADDR, cseq=2, auth=True)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, ra), (T0, PROVIDER, A_ADDR, response(ra, 401, challenge='Digest realm="x", nonce="n2"')),
                   (T0, B_ADDR, PROVIDER, rb),
                   (T0, PROVIDER, B_ADDR, response(rb, 401, challenge='Digest realm="x", nonce="n2", stale=true'))])
    obs += ev.tick(T0 + 100)
    assert obs == [], obs
    assert ev.stats["challenges"] == 2 and ev.stats["unanswered_challenges"] == 2, ev.stats


def test_a_challenge_the_phone_never_answers_changes_nothing_after_the_timeout():
    ev = evidence(PHONE_A, timeout=10)
    req = register("1001", A_ADDR)
    assert run(ev, [(T0, A_ADDR, PROVIDER, req), (T0 + 0.1, PROVIDER, A_ADDR, response(req, 407, challenge="Digest realm=x"))]) == []
    assert ev.tick(T0 + 5) == []
    assert ev.tick(T0 + 11) == [], "one unauthenticated REGISTER must not show the phone down(407)"
    assert ev.stats["unanswered_challenges"] == 1, ev.stats


def test_no_answer_within_the_transaction_timeout_is_reported_as_no_answer():
    ev = evidence(PHONE_A, timeout=32)
    req = register("1001", A_ADDR)
    assert run(ev, [(T0, A_ADDR, PROVIDER, req), (T0 + 0.5, A_ADDR, PROVIDER, req), (T0 + 1.5, A_ADDR, PROVIDER, req)]) == []
    assert ev.tick(T0 + 31.9) == [], "not before the timeout"
    obs = ev.tick(T0 + 32.5)
    assert len(obs) == 1 and obs[0].state == UNREGISTERED and obs[0].detail.startswith("no answer"), obs
    assert obs[0].t == pytest.approx(T0 + 32)
    assert ev.tick(T0 + 100) == [], "reported once"
    late = run(ev, [(T0 + 40, PROVIDER, A_ADDR, response(req, 200))])
    assert late == [], "an answer after the transaction ended is stray"


def test_expires_zero_accepted_is_unregistered():
    ev = evidence(PHONE_A, PHONE_B)
    ra = register("1001", A_ADDR, expires=0)
    rb = register("1002", B_ADDR, expires=None, contact_expires=0)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, ra), (T0, PROVIDER, A_ADDR, response(ra, 200)),
                   (T0, B_ADDR, PROVIDER, rb), (T0, PROVIDER, B_ADDR, response(rb, 200))])
    assert sorted((o.mac, o.state, o.detail.split()[0]) for o in obs) == [
        ("0004f2000001", UNREGISTERED, "unregistered"), ("0004f2000002", UNREGISTERED, "unregistered")]


def test_several_phones_behind_one_address_are_told_apart_by_their_user():
    nat = "198.51.100.7"      # the capture point is outside a NAT: every phone has this source address
    behind = [WireTarget(mac=mac, reg=1, server=1, address=PROVIDER, user=user, phone_ip=ip, allowed=(nat,))
              for mac, user, ip in (PHONE_A, PHONE_B)]       # the inventory says so (allow_from)
    ev = WireEvidence(Attribution(behind))
    ev.outcomes = []
    ra = register("1001", (nat, 40001))
    rb = register("1002", (nat, 40002))
    rx = register("1099", (nat, 40003))        # a soft phone we do not manage
    obs = run(ev, [(T0, (nat, 40001), PROVIDER, ra), (T0, (nat, 40002), PROVIDER, rb), (T0, (nat, 40003), PROVIDER, rx),
                   (T0 + 0.1, PROVIDER, (nat, 40002), response(rb, 403, "Forbidden")),
                   (T0 + 0.1, PROVIDER, (nat, 40001), response(ra, 200, expires=120)),
                   (T0 + 0.1, PROVIDER, (nat, 40003), response(rx, 200))])
    assert sorted((o.mac, o.state) for o in obs) == [("0004f2000001", REGISTERED), ("0004f2000002", UNREGISTERED)]
    assert ev.stats["no_matching_phone"] == 1


def test_a_shared_user_is_told_apart_by_the_phone_address_and_never_guessed():
    p1 = ("0004f2000011", "2000", "192.168.10.31")
    p2 = ("0004f2000012", "2000", "192.168.10.32")
    ev = evidence(p1, p2)
    r1 = register("2000", ("192.168.10.31", 5060))
    r3 = register("2000", ("192.168.10.99", 5060))     # same user, neither phone's address
    obs = run(ev, [(T0, ("192.168.10.31", 5060), PROVIDER, r1), (T0, PROVIDER, ("192.168.10.31", 5060), response(r1, 200)),
                   (T0, ("192.168.10.99", 5060), PROVIDER, r3), (T0, PROVIDER, ("192.168.10.99", 5060), response(r3, 200))])
    assert [o.mac for o in obs] == ["0004f2000011"]
    assert ev.stats["foreign"] == 1 and ev.build.attribution.foreign == {"192.168.10.99": 1}, \
        "neither phone's address: foreign (issue 17), never guessed"


def test_each_server_is_attributed_by_destination_address_and_port():
    a_provider = WireTarget("0004f2000001", 1, 1, PROVIDER, "1001")
    a_gateway = WireTarget("0004f2000001", 1, 2, GATEWAY, "1001")
    ev = WireEvidence(Attribution([a_provider, a_gateway]))
    r1 = register("1001", A_ADDR, PROVIDER, call_id="p")
    r2 = register("1001", A_ADDR, GATEWAY, call_id="g")
    obs = run(ev, [(T0, A_ADDR, PROVIDER, r1), (T0, A_ADDR, GATEWAY, r2), (T0 + 0.1, GATEWAY, A_ADDR, response(r2, 200))])
    obs += ev.tick(T0 + 40)
    assert sorted((o.server, o.state, o.detail.split()[0]) for o in obs) == [
        (1, UNREGISTERED, "no"), (2, REGISTERED, "registered")]


def test_tls_only_phones_are_not_observable_on_the_wire():
    att = Attribution([WireTarget("0004f2000001", 1, 1, ("203.0.113.10", 5061), "1001", transport="tls"),
                       WireTarget("0004f2000001", 1, 2, GATEWAY, "1001")])
    assert [(u.mac, u.server, u.reason) for u in att.unobservable()] == [("0004f2000001", 1, NOT_OBSERVABLE)]
    ev = WireEvidence(att)
    req = register("1001", A_ADDR, ("203.0.113.10", 5061))
    assert run(ev, [(T0, A_ADDR, ("203.0.113.10", 5061), req),
                    (T0, ("203.0.113.10", 5061), A_ADDR, response(req, 200))]) == []


def test_simple_map_form_of_attribution():
    att = Attribution.from_map({PROVIDER: ("0004f2000001", 1, 1)})
    ev = WireEvidence(att)
    req = register("1001", A_ADDR)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, req), (T0, PROVIDER, A_ADDR, response(req, 200))])
    assert [(o.mac, o.reg, o.server) for o in obs] == [("0004f2000001", 1, 1)]


# --- frames: fragments, link types, junk -------------------------------------------------------------------

def test_ip_fragments_of_a_large_answer_are_reassembled_in_any_order():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    big = response(req, 200, contacts=[f"<sip:1001@{A_ADDR[0]}:{A_ADDR[1]}>;expires=900"], pad_contacts=40)
    frags = fragments(PROVIDER, A_ADDR, big)
    assert len(frags) >= 4
    order = [frags[-1], *frags[1:-1][::-1], frags[0]]
    stream = pcap([(T0, bytes(udp_ip(A_ADDR, PROVIDER, req)))] + [(T0 + 0.01, f) for f in order], LINKTYPE_RAW)
    obs = [o for r in iter_pcap(io.BytesIO(stream)) for o in ev.feed_frame(r.t, r.linktype, r.frame)]
    assert [(o.state, detail_fields(o.detail)["expires"]) for o in obs] == [(REGISTERED, "900")], ev.stats
    assert ev.stats["fragments_reassembled"] == 1


def test_a_missing_fragment_gives_nothing_and_is_forgotten():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    frags = fragments(PROVIDER, A_ADDR, response(req, 200, pad_contacts=40))
    ev.feed_frame(T0, LINKTYPE_RAW, bytes(udp_ip(A_ADDR, PROVIDER, req)))
    obs = [o for f in frags[:-2] + frags[-1:] for o in ev.feed_frame(T0 + 0.01, LINKTYPE_RAW, f)]
    assert obs == []
    ev.tick(T0 + 31)
    assert ev.stats["fragments_timed_out"] == 1 and len(ev.decoder.reassembler) == 0


def test_overlapping_fragments_are_dropped():
    d = FrameDecoder()
    frags = fragments(PROVIDER, A_ADDR, b"x" * 2000)
    evil = bytearray(frags[1])
    struct.pack_into("!H", evil, 6, 0x2000 | 10)      # claims an offset inside the first piece
    got = [d.decode(T0, LINKTYPE_RAW, f) for f in [frags[0], bytes(evil), *frags[1:]]]
    assert all(g is None for g in got) and d.reassembler.stats["fragments_overlap"] == 1


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, "vlan"])
def test_link_layers_of_real_capture_points(linktype):
    payload = register("1001", A_ADDR)
    ip = bytes(udp_ip(A_ADDR, PROVIDER, payload))
    if linktype == "vlan":
        lt, frame = LINKTYPE_ETHERNET, eth(A_ADDR, PROVIDER, payload, vlan=20)
    elif linktype == LINKTYPE_ETHERNET:
        lt, frame = linktype, eth(A_ADDR, PROVIDER, payload)
    elif linktype == LINKTYPE_LINUX_SLL:
        lt, frame = linktype, struct.pack("!HHH8sH", 4, 1, 6, b"\x00\x04\xf2\x00\x00\x01\x00\x00", 0x0800) + ip
    elif linktype == LINKTYPE_LINUX_SLL2:
        lt, frame = linktype, struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 4, 6, b"\x00\x04\xf2\x00\x00\x01\x00\x00") + ip
    else:
        lt, frame = linktype, ip
    dg = FrameDecoder().decode(T0, lt, frame)
    assert dg == Datagram(T0, A_ADDR, PROVIDER, payload)


def test_garbage_truncated_and_non_sip_frames_give_no_observation():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    ok = eth(PROVIDER, A_ADDR, response(req, 200))
    dns = eth(("192.168.10.21", 53000), ("192.168.10.1", 53), bytes(dpkt.dns.DNS(id=1, qd=[dpkt.dns.DNS.Q(name="example.com")])))
    options = eth(A_ADDR, PROVIDER, register("1001", A_ADDR).replace(b"REGISTER", b"OPTIONS").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 OPTIONS"))
    junk = [b"", b"\x00", os.urandom(13), os.urandom(200), ok[:40], ok[:-30], dns, options,
            eth(A_ADDR, PROVIDER, b"\r\n\r\n"), eth(A_ADDR, PROVIDER, b"REGISTER garbage\r\n\r\n")]
    obs = []
    for frame in junk:
        obs += ev.feed_frame(T0, LINKTYPE_ETHERNET, frame)
    obs += ev.feed_frame(T0, LINKTYPE_ETHERNET, ok)        # an answer whose request we never saw
    obs += ev.tick(T0 + 100)
    assert obs == [], obs
    s = ev.stats
    assert s["stray_responses"] == 1 and s["frames_truncated"] >= 1 and s["frames_malformed"] >= 1, s


def test_a_snaplen_cut_register_is_not_guessed_at():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    frame = eth(A_ADDR, PROVIDER, req)
    rec = PcapStreamParser().feed(pcap([(T0, frame[:120])]))[0]
    assert ev.feed_frame(rec.t, rec.linktype, rec.frame) == [] and ev.stats["frames_truncated"] == 1


# --- pcap streams ------------------------------------------------------------------------------------------

def test_pcap_stream_in_any_chunking_and_both_byte_orders():
    frames = [(T0 + i * 0.25, eth(A_ADDR, PROVIDER, register("1001", A_ADDR, cseq=i + 1))) for i in range(5)]
    data = pcap(frames)
    whole = PcapStreamParser().feed(data)
    parser = PcapStreamParser()
    bytewise = [r for i in range(len(data)) for r in parser.feed(data[i:i + 1])]
    assert [(r.t, r.frame) for r in whole] == [(r.t, r.frame) for r in bytewise] == [(pytest.approx(t), f) for t, f in frames]
    # big-endian, nanosecond file header as some capture tools write
    be = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    be += struct.pack(">IIII", int(T0), 250_000_000, len(frames[0][1]), len(frames[0][1])) + frames[0][1]
    recs = PcapStreamParser().feed(be)
    assert len(recs) == 1 and recs[0].t == pytest.approx(T0 + 0.25) and recs[0].frame == frames[0][1]


def test_pcap_stream_from_a_pipe_yields_records_before_the_writer_finishes():
    r, w = os.pipe()
    data = pcap([(T0, eth(A_ADDR, PROVIDER, register("1001", A_ADDR)))])
    release = threading.Event()

    def writer():
        os.write(w, data)
        release.wait(10)
        os.write(w, data[24:])
        os.close(w)
    th = threading.Thread(target=writer)
    th.start()
    with os.fdopen(r, "rb") as f:
        it = iter_pcap(f)
        first = next(it)
        release.set()
        rest = list(it)
    th.join()
    assert first.frame == rest[0].frame and len(rest) == 1


def test_pcap_stream_errors_are_clear():
    with pytest.raises(PcapFormatError, match="pcapng"):
        PcapStreamParser().feed(struct.pack("<I", 0x0A0D0D0A) + b"\x00" * 28)
    with pytest.raises(PcapFormatError, match="not a pcap stream"):
        PcapStreamParser().feed(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n")
    bad = pcap([]) + struct.pack("<IIII", 1, 0, 10_000_000, 10)
    with pytest.raises(PcapFormatError, match="corrupt"):
        PcapStreamParser().feed(bad)


def test_capture_command_per_router_platform():
    linux_ssh = platforms.get("linux_ssh")
    linux = linux_ssh.capture_template()          # the default flavour: linux
    assert linux == linux_ssh.capture_template("linux")
    cmd = capture_command(linux, "eth1")
    assert cmd.startswith("exec tcpdump -U -n -s 0 -w - -i eth1 ") and "'(udp and (port 5060)) or (ip[6:2] & 0x1fff != 0)'" in cmd
    assert "port 5080" in capture_command(linux, "wan0", ports=(5060, 5080), hosts=("203.0.113.10",))
    assert capture_command(linux_ssh.capture_template("vyos"), "eth1").startswith("exec sudo tcpdump ")
    with pytest.raises(ValueError, match="interface"):
        capture_command(linux, "eth0; reboot")
    with pytest.raises(ValueError, match="cannot stream"):
        platforms.get("snmp").capture_template()
    with pytest.raises(ValueError, match="known:"):
        linux_ssh.capture_template("mikrotik")
    with pytest.raises(ValueError):
        capture_command(linux, "eth1", hosts=("not-an-ip; rm -rf /",))
    assert set(linux_ssh.captures) >= {"linux", "openwrt", "vyos"}
    assert local_capture_argv("eth2")[:2] == ["tcpdump", "-U"]


def _fake_tcpdump(folder: Path, body: str) -> str:
    """A PATH whose only tcpdump is a Python script with `body` (argv in sys.argv): the tool's answers on demand."""
    import sys
    folder.mkdir(exist_ok=True)
    tool = folder / "tcpdump"
    tool.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    tool.chmod(0o755)
    return str(folder)


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def test_local_capture_without_the_capability_says_what_is_missing(tmp_path, monkeypatch):
    """Forced, not left to the host: tcpdump's permission error becomes CAP_NET_RAW plus the setcap advice; no
    tcpdump on PATH says to install it; an interface tcpdump does not know is named."""
    monkeypatch.setenv("PATH", _fake_tcpdump(tmp_path / "denied", (
        "sys.stderr.write('tcpdump: lo: You don\\'t have permission to capture on that device\\n"
        "(socket: Operation not permitted)\\n'); sys.exit(1)")))
    with pytest.raises(CaptureUnavailable, match=r"CAP_NET_RAW.*setcap cap_net_raw.*Operation not permitted"):
        check_capture("lo")
    monkeypatch.setenv("PATH", _fake_tcpdump(tmp_path / "nodev", (
        "sys.stderr.write('tcpdump: no-such-if0: No such device exists\\n'); sys.exit(1)")))
    with pytest.raises(CaptureUnavailable, match="no network interface named no-such-if0"):
        check_capture("no-such-if0")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(CaptureUnavailable, match="needs tcpdump"):
        check_capture("lo")


def test_local_capture_check_trusts_tcpdump_not_the_workers_own_rights(tmp_path, monkeypatch):
    """`setcap cap_net_raw+ep tcpdump` is the advice: a tcpdump that opens the capture passes the check even where
    the worker itself may not open a raw socket (before, the check probed a raw socket from the worker)."""
    monkeypatch.setenv("PATH", _fake_tcpdump(tmp_path / "capable", (
        f"sys.stdout.buffer.write({PCAP_HEADER!r}); sys.stdout.flush(); time.sleep(30)")))
    real_socket = socket.socket

    def no_raw(family=-1, *a, **kw):
        if family == getattr(socket, "AF_PACKET", None):
            raise PermissionError(1, "Operation not permitted")
        return real_socket(family, *a, **kw)

    monkeypatch.setattr(socket, "socket", no_raw)
    check_capture("lo")                              # no CaptureUnavailable
    from fleet.evidence.sources.local_capture import start_local_capture
    proc = start_local_capture("lo", (5080,))
    try:
        assert iter_pcap_header(proc) == PCAP_HEADER  # the header is still there for the reader
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def iter_pcap_header(proc) -> bytes:
    return proc.stdout.read(24)


def test_local_capture_filters_the_sites_ports_and_vlan_tagged_frames(tmp_path, monkeypatch):
    """The local capture runs with the ports of the site's targets (SRV ones included), like the router capture,
    and its filter also takes 802.1Q-tagged frames (a mirror port keeps the tags); before: 5060, untagged only."""
    from fleet.evidence.sources.base import Sink
    from fleet.evidence.sources.local_capture import LocalCapture
    from fleet.evidence.sources.targets import Targets
    from fleet.config.inventory import Capture, Inventory

    argv_file = tmp_path / "argv"
    monkeypatch.setenv("PATH", _fake_tcpdump(tmp_path / "capable", (
        f"open({str(argv_file)!r}, 'w').write(chr(10).join(sys.argv[1:]))\n"
        f"sys.stdout.buffer.write({PCAP_HEADER!r}); sys.stdout.flush(); time.sleep(30)")))
    inv = Inventory.model_validate({
        "name": "lc", "firmware_family": "sip-3.x",
        "sites": [{"name": "lc", "gateway": "192.0.2.1", "boot_server": {"url": "file:///nonexistent"},
                   "capture": ["interface lo"],
                   "params": {"reg.1.server.1.address": "192.0.2.10", "reg.1.server.1.port": "5080",
                              "reg.1.server.2.address": "192.0.2.1", "reg.1.server.2.port": "5062"},
                   "phones": [{"mac": "0004f2000001", "model": "SoundPoint IP 650", "address": "192.0.2.20",
                               "credentials": "admin", "params": {"reg.1.address": "1001"}}]}]})
    site = inv.sites[0]
    targets = Targets(site, lambda: {"0004f2000001": inv.effective_params(site, site.phones[0])})
    source = LocalCapture(site, Sink(lambda o: None, lambda s, d: None), site.capture[0], targets)
    source.start()
    try:
        wait_until(lambda: argv_file.exists() and argv_file.read_text(), 10, "the capture started tcpdump", step=0.05)
        argv = argv_file.read_text().split("\n")
    finally:
        source.stop()
        source.join(10)
    assert argv[argv.index("-i") + 1] == "lo"
    # the servers' ports and the DNS port (a phone's failed lookup is evidence too: issue 17)
    assert argv[-1].endswith("or (vlan and udp and (port 53 or port 5062 or port 5080))"), argv[-1]
    assert "(udp and (port 53 or port 5062 or port 5080))" in argv[-1]


# --- HEP v3 ------------------------------------------------------------------------------------------------

def test_hep_round_trip_ipv4_and_ipv6():
    payload = register("1001", A_ADDR)
    p = hep.parse(hep.encode(A_ADDR, PROVIDER, T0 + 0.123456, payload))
    assert (p.src, p.dst, p.payload, p.proto_type, p.agent_id) == (A_ADDR, PROVIDER, payload, 1, 2001)
    assert p.t == pytest.approx(T0 + 0.123456, abs=1e-6)
    p6 = hep.parse(hep.encode(("2001:db8::21", 5060), ("2001:db8::1", 5060), T0, payload))
    assert (p6.family, p6.src, p6.dst) == (10, ("2001:db8::21", 5060), ("2001:db8::1", 5060))


def test_real_kamailio_siptrace_hep_gives_the_outcomes_kamailio_gave():
    datagrams = [bytes.fromhex(line) for line in (DATA / "kamailio_siptrace_hep3.hex").read_text().split()]
    server = ("127.0.0.1", 25060)
    tg = [WireTarget(f"0004f20000{i:02d}", 1, 2, server, f"100{i}") for i in range(1, 6)]
    ev = WireEvidence(Attribution(tg), source="hep")
    obs = [o for d in datagrams for o in ev.feed_hep(d)]
    got = {o.mac[-2:]: (o.state, detail_fields(o.detail).get("code"), detail_fields(o.detail).get("expires")) for o in obs}
    assert got == {"01": (REGISTERED, "200", "3600"), "02": (REGISTERED, "200", "600"),
                   "03": (UNREGISTERED, "403", None),
                   "05": (REGISTERED, "200", "120")}, ev.stats
    assert ev.stats["challenges"] == 5, "04's wrong password: challenged twice, no state from a challenge (issue 17)"
    assert all(o.source == "hep" and o.server == 2 for o in obs)


def _chunks(data: bytes) -> list[tuple[int, int, int]]:
    out, pos = [], 6
    while pos < len(data):
        v, t, n = struct.unpack_from("!HHH", data, pos)
        out.append((pos, t, n))
        pos += n
    return out


def test_malformed_hep_is_refused_with_a_reason():
    good = hep.encode(A_ADDR, PROVIDER, T0, register("1001", A_ADDR))
    cases = {"truncated": good[:-10], "short": good[:5], "magic": b"HEP2" + good[4:],
             "v2": b"\x02\x10\x02\x11" + good[4:], "total": good[:4] + struct.pack("!H", 5) + good[6:]}
    pos, _, n = next(c for c in _chunks(good) if c[1] == 7)
    wrong = bytearray(good)
    struct.pack_into("!H", wrong, pos + 4, 3)                    # chunk length smaller than its header
    cases["chunk-too-short"] = bytes(wrong)
    wrong = bytearray(good)
    struct.pack_into("!H", wrong, pos + 4, 60000)                # chunk length past the end
    cases["chunk-too-long"] = bytes(wrong)
    wrong = bytearray(good)
    struct.pack_into("!H", wrong, pos + 4, n + 1)                # port chunk one byte too long: everything shifts
    cases["chunk-off-by-one"] = bytes(wrong)
    no_payload = good[:_chunks(good)[-1][0]]
    cases["no-payload"] = no_payload[:4] + struct.pack("!H", len(no_payload)) + no_payload[6:]
    for name, data in cases.items():
        with pytest.raises(hep.HepError):
            hep.parse(data)
        ev = evidence(PHONE_A)
        assert ev.feed_hep(data) == [], name


def test_hep_compressed_payload_and_unknown_chunks():
    payload = register("1001", A_ADDR)
    plain = hep.encode(A_ADDR, PROVIDER, T0, payload)
    last = _chunks(plain)[-1][0]
    vendor_chunk = struct.pack("!HHH", 0x0003, 0x0020, 10) + b"abcd"          # vendor-specific: skipped
    comp = zlib.compress(payload)
    body = plain[6:last] + vendor_chunk + struct.pack("!HHH", 0, 16, 6 + len(comp)) + comp
    data = b"HEP3" + struct.pack("!H", 6 + len(body)) + body
    assert hep.parse(data).payload == payload
    bomb = zlib.compress(b"\x00" * 200_000)
    body = plain[6:last] + struct.pack("!HHH", 0, 16, 6 + len(bomb)) + bomb
    with pytest.raises(hep.HepError, match="65535"):
        hep.parse(b"HEP3" + struct.pack("!H", 6 + len(body)) + body)


def test_hep_listener_accepts_only_configured_sources():
    async def scenario():
        got = []
        transport, proto = await start_hep_listener("127.0.0.1", 0, ["127.0.0.1"], lambda p, a: got.append(p))
        port = transport.get_extra_info("sockname")[1]
        payload = register("1001", A_ADDR)
        allowed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        allowed.bind(("127.0.0.1", 0))
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.2", 0))
        try:
            other.sendto(hep.encode(A_ADDR, PROVIDER, T0, payload), ("127.0.0.1", port))
            allowed.sendto(b"HEP3 junk", ("127.0.0.1", port))
            allowed.sendto(hep.encode(A_ADDR, PROVIDER, T0, payload), ("127.0.0.1", port))
            # the three datagrams counted, however each was judged (the caller asserts on the counts)
            await await_until(lambda: sum(proto.stats.values()) >= 3, 5, "three datagrams counted", step=0.01, fail=False)
            return got, dict(proto.stats)
        finally:
            allowed.close()
            other.close()
            transport.close()
    got, stats = asyncio.run(scenario())
    assert stats == {"rejected_source": 1, "malformed": 1, "accepted": 1}, stats
    assert [p.payload[:8] for p in got] == [b"REGISTER"]
    with pytest.raises(ValueError, match="allowed source"):
        HepListener([], lambda p, a: None)


# --- gateway bindings --------------------------------------------------------------------------------------

def test_kamailio_ul_dump_real_output():
    bindings = gb.parse_kamailio((DATA / "kamailio_ul_dump.txt").read_text())
    assert sorted((b.user, b.contact, b.expires_in) for b in bindings) == [
        ("1001", "sip:1001@127.0.0.1:35061", 3599), ("1002", "sip:1002@127.0.0.1:35062", 599),
        ("1005", "sip:1005@127.0.0.1:35065", 119)]
    with pytest.raises(gb.GatewayOutputError, match="brief"):
        gb.parse_kamailio((DATA / "kamailio_ul_dump_brief.txt").read_text())
    text = (DATA / "kamailio_ul_dump.txt").read_text()
    with pytest.raises(gb.GatewayOutputError, match="cut"):
        gb.parse_kamailio(text[: len(text) * 2 // 3])
    noisy = "WARNING: something\n" + text.replace("Q: -1", "Q: -1\n\t\t\t\t\t\t\x00garbage line without colon")
    assert len(gb.parse_kamailio(noisy)) == 3
    empty = "{\n\tDomains: {\n\t\tDomain: {\n\t\t\tDomain: location\n\t\t\tSize: 1024\n\t\t\tAoRs: {\n\t\t\t}\n\t\t}\n\t}\n}\n"
    assert gb.parse_kamailio(empty) == []
    deleted = text.replace("Expires: 599", "Expires: deleted")
    assert {b.user: b.active for b in gb.parse_kamailio(deleted)} == {"1001": True, "1002": False, "1005": True}


def test_asterisk_contacts_with_expiry_from_the_registrar_records():
    bindings = gb.parse_asterisk((DATA / "asterisk_contacts.txt").read_text())
    got = {b.user: (b.contact, b.expires_in, b.status, b.active) for b in bindings}
    assert got == {"1001": ("sip:1001@192.168.10.21:5060", 3590, "Avail", True),
                   "1002": ("sip:1002@192.168.10.22:5060;line=kd7ee", 290, "NonQual", True),
                   "1004": ("sip:1004@192.168.10.24:5060", 0, "Unavail", False)}
    only_cli = "\n".join(line for line in (DATA / "asterisk_contacts.txt").read_text().splitlines()
                         if not line.startswith("/registrar"))
    assert {b.user: b.expires_in for b in gb.parse_asterisk(only_cli)} == {"1001": None, "1002": None, "1004": None}
    assert gb.parse_asterisk("No objects found.\n") == []
    with pytest.raises(gb.GatewayOutputError):
        gb.parse_asterisk("Unable to connect to remote asterisk (does /var/run/asterisk/asterisk.ctl exist?)\n")


def test_freeswitch_registrations():
    bindings = gb.parse_freeswitch((DATA / "freeswitch_registrations.txt").read_text())
    got = {b.user: (b.contact_host, b.expires_in, b.source_ip, b.active) for b in bindings}
    assert got == {"1001": ("192.168.10.21", 3600, "192.168.10.21", True),
                   "1002": ("192.168.10.22", 300, "203.0.113.9", True),
                   "1004": ("192.168.10.24", 0, "192.168.10.24", False)}
    assert gb.parse_freeswitch("\n0 total.\n") == []
    with pytest.raises(gb.GatewayOutputError):
        gb.parse_freeswitch("-ERR no reply\n")


def test_kamailio_reply_too_big_names_the_ctl_parameter_to_raise():
    """kamcmd's answer when ul.dump outgrows ctl's binrpc_max_body_size (kamailio issue #1127); before, it read
    as "not a Kamailio ul.dump answer", which does not say what to change."""
    for answer in ("ERROR: reply too big\n", "error: 500 - reply too big\n"):
        with pytest.raises(gb.GatewayOutputError, match=r"binrpc_max_body_size.*modparam\(\"ctl\""):
            gb.parse_kamailio(answer)


def test_asterisk_joins_cli_rows_and_registrar_records_on_the_contact_hash():
    """A long Contact URI is cut by `pjsip show contacts` (res_pjsip `%-*.*s`): joined on the hash, the phone keeps
    its expiry and its full URI; before, the (aor, uri) join missed and the binding lost its expiry (and came
    twice)."""
    long_uri = "sip:1003@192.168.10.23:5060;transport=udp;line=q7x0k2m9zz;x-long=yes"
    text = (DATA / "asterisk_contacts.txt").read_text()
    record = ('/registrar/contact/1003;@77aa66bb55cc44dd33ee22ff11009988: {"expiration_time":"1795715600",'
              f'"uri":"{long_uri}","via_addr":"192.168.10.23","user_agent":"PolycomSoundPointIP-SPIP_650-UA/4.0.15"}}\n')
    row = f"  Contact:  1003/{long_uri[:41]} 77aa66bb55 Avail        12.000\n"
    text = record + text.replace("\nObjects found: 3", row + "\nObjects found: 4")
    got = [(b.user, b.contact, b.expires_in, b.status, b.source_ip) for b in gb.parse_asterisk(text) if b.user == "1003"]
    assert got == [("1003", long_uri, 600, "Avail", "192.168.10.23")]


def test_freeswitch_profile_named_sip_is_not_the_contact():
    """`url.find("sip")` took the profile name of `sofia/sip-lan/sip:...` for the URI; before: contact
    "sip-lan/sip:1001@..." whose host was not the phone's."""
    text = (DATA / "freeswitch_registrations.txt").read_text().replace("sofia/internal/", "sofia/sip-lan/")
    got = {b.user: (b.contact, b.contact_host) for b in gb.parse_freeswitch(text)}
    assert got["1001"] == ("sip:1001@192.168.10.21:5060", "192.168.10.21")
    assert got["1004"][1] == "192.168.10.24"


def test_bindings_become_observations_for_the_gateway_server():
    bindings = gb.parse_asterisk((DATA / "asterisk_contacts.txt").read_text())
    tg = [WireTarget("0004f2000001", 1, 2, GATEWAY, "1001"), WireTarget("0004f2000004", 1, 2, GATEWAY, "1004"),
          WireTarget("0004f2000009", 1, 2, GATEWAY, "1009"), WireTarget("0004f200000a", 1, 2, GATEWAY)]
    obs = gb.observations(bindings, tg, T0)
    assert [(o.mac, o.server, o.state, o.source, o.detail) for o in obs] == [
        ("0004f2000001", 2, REGISTERED, "gateway", "binding expires=3590 contacts=1"),
        ("0004f2000004", 2, UNREGISTERED, "gateway", "no binding"),
        ("0004f2000009", 2, UNREGISTERED, "gateway", "no binding")], "no user and no address: no observation"


def test_gateway_platforms_are_data():
    assert set(gb.PLATFORMS) == {"kamailio", "asterisk", "freeswitch"}
    kamailio = gb.platform("kamailio").command       # JSON-RPC, else kamcmd per AoR; kamcmd's faults come on stderr
    assert '"method\\": \\"ul.dump\\"' in kamailio and "kamcmd ul.dump brief 2>&1" in kamailio
    assert 'kamcmd ul.lookup "s:$table" "s:$aor" 2>&1' in kamailio
    assert "pjsip show contacts" in gb.platform("asterisk").command
    assert "show registrations" in gb.platform("freeswitch").command
    with pytest.raises(ValueError, match="known"):
        gb.platform("3cx")


# --- fuzz: no exception escapes, no observation from junk --------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_valid_req = register("1001", A_ADDR)
_valid_ok = response(_valid_req, 200, expires=60)


def _mutations():
    base = st.sampled_from([_valid_req, _valid_ok, pcap([(T0, eth(A_ADDR, PROVIDER, _valid_req))]),
                            hep.encode(A_ADDR, PROVIDER, T0, _valid_ok)])

    def mutate(args):
        data, edits = args
        b = bytearray(data)
        for pos, val, kind in edits:
            if not b:
                break
            i = pos % len(b)
            if kind == 0:
                b[i] = val
            elif kind == 1:
                del b[i:i + val % 16 + 1]
            else:
                b[i:i] = bytes([val]) * (val % 7 + 1)
        return bytes(b)
    edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 2)), min_size=1, max_size=6)
    return st.tuples(base, edits).map(mutate)


junk = st.one_of(st.binary(max_size=600), _mutations())


@FUZZ
@given(junk)
def test_fuzz_pcap_bytes(data):
    ev = evidence(PHONE_A)
    parser = PcapStreamParser()
    obs = []
    try:
        for rec in parser.feed(data):
            obs += ev.feed_frame(rec.t, rec.linktype, rec.frame)
    except PcapFormatError:
        pass
    obs += ev.tick(T0 + 1e6)
    # a mangled capture may still hold an intact REGISTER (then "no answer" is a true statement about it),
    # but never an answer to one
    assert [o for o in obs if not o.detail.startswith("no answer")] == []


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_pcap_bytes_after_a_valid_header(data):
    ev = evidence(PHONE_A)
    obs = []
    try:
        for rec in PcapStreamParser().feed(pcap([]) + data):
            obs += ev.feed_frame(rec.t, rec.linktype, rec.frame)
    except PcapFormatError:
        pass
    assert obs + ev.tick(T0 + 1e6) == []


@FUZZ
@given(junk, st.sampled_from([LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, 0, 9999]))
def test_fuzz_frames(data, linktype):
    ev = evidence(PHONE_A)
    assert ev.feed_frame(T0, linktype, data) == []


@FUZZ
@given(junk)
def test_fuzz_hep_bytes(data):
    try:
        hep.parse(data)
    except hep.HepError:
        pass
    ev = evidence(PHONE_A)
    assert ev.feed_hep(data) == []


@FUZZ
@given(junk)
def test_fuzz_sip_bytes(data):
    register_message(data)
    ev = evidence(PHONE_A)
    obs = ev.feed_datagram(Datagram(T0, PROVIDER, A_ADDR, data))        # a lone answer: nothing to match
    assert obs == [] and ev.tick(T0 + 1e6) == []


def test_an_accepted_refresh_granted_0_seconds_holds_no_binding():
    """Found by the fuzz test below: a 200 OK whose Expires is 0 (written `Expires:0`) is an unregistration."""
    ev = evidence(PHONE_A)
    ev.feed_datagram(Datagram(T0, A_ADDR, PROVIDER, _valid_req))
    answer = response(_valid_req, 200, expires=60).replace(b"Expires: 60", b"Expires:0")
    assert b"Expires:0" in answer
    (obs,) = ev.feed_datagram(Datagram(T0 + 0.1, PROVIDER, A_ADDR, answer))
    assert obs.state == UNREGISTERED and obs.expires == 0, obs


@FUZZ
@given(_mutations())
def test_fuzz_an_answer_to_a_real_request_is_either_a_proper_outcome_or_nothing(data):
    """A mangled answer may still be a valid answer (say, a changed reason phrase); then its outcome must be
    what it says. Otherwise nothing."""
    ev = evidence(PHONE_A)
    ev.feed_datagram(Datagram(T0, A_ADDR, PROVIDER, _valid_req))
    obs = ev.feed_datagram(Datagram(T0 + 0.1, PROVIDER, A_ADDR, data))
    msg = register_message(data)
    if obs:
        assert msg is not None and msg.status is not None and msg.call_id == f"cid-1001-5060@{A_ADDR[0]}"
        if 200 <= msg.status < 300:
            # accepted: registered, unless the answer grants the binding 0 s (RFC 3261 10.3: it then holds none)
            assert obs[0].state == REGISTERED or (obs[0].state == UNREGISTERED and obs[0].expires == 0), (obs, data)
        else:
            assert obs[0].state == UNREGISTERED, (obs, data)


@FUZZ
@given(st.text(max_size=800), st.sampled_from(["kamailio", "asterisk", "freeswitch"]))
def test_fuzz_gateway_output(text, name):
    try:
        bindings = gb.platform(name).parse(text, T0)
    except gb.GatewayOutputError:
        return
    for b in bindings:
        assert b.contact.lower().startswith(("sip:", "sips:"))


@FUZZ
@given(st.lists(st.sampled_from((DATA / "kamailio_ul_dump.txt").read_text().splitlines()), max_size=120))
def test_fuzz_shuffled_kamailio_lines_never_invent_contacts(lines):
    try:
        bindings = gb.parse_kamailio("\n".join(lines))
    except gb.GatewayOutputError:
        return
    real = {"sip:1001@127.0.0.1:35061", "sip:1002@127.0.0.1:35062", "sip:1005@127.0.0.1:35065"}
    assert {b.contact for b in bindings} <= real


# --- the lean SIP parser -----------------------------------------------------------------------------------

def test_wire_sip_reads_compact_folded_and_combined_headers():
    from fleet.evidence.wire import sip as wire_sip
    raw = (b"REGISTER sip:203.0.113.10 SIP/2.0\r\n"
           b"v: SIP/2.0/UDP 192.168.10.21:5060;branch=z9hG4bKtop, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKlow\r\n"
           b"f: <sip:1001@203.0.113.10>;tag=a\r\nt: <sip:1001@203.0.113.10>\r\ni: abc@host\r\n"
           b"CSeq: 9 register\r\nm: <sip:1001@192.168.10.21:5060>,\r\n <sip:1001@192.168.10.21:5062>;expires=30\r\n"
           b"l: 0\r\n\r\n")
    msg = wire_sip.parse(raw)
    assert (msg.method, msg.cseq, msg.call_id, msg.top_via_branch) == ("REGISTER", (9, "REGISTER"), "abc@host", "z9hG4bKtop")
    assert msg.get("Contact") == "<sip:1001@192.168.10.21:5060>, <sip:1001@192.168.10.21:5062>;expires=30"
    from fleet.evidence.wire.transactions import split_contacts
    assert split_contacts(msg.get_all("contact")) == [("sip:1001@192.168.10.21:5060", {}),
                                                      ("sip:1001@192.168.10.21:5062", {"expires": "30"})]
    for bad in (raw.replace(b"CSeq: 9", b"CSeq: \xc2\xb2"), raw.replace(b"i: abc@host\r\n", b""),
                raw.replace(b"l: 0", b"l: 40"), raw.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
                raw.replace(b"f: <", b"f <"), raw[:-4]):
        with pytest.raises(wire_sip.SipParseError):
            wire_sip.parse(bad)


@FUZZ
@given(junk)
def test_fuzz_wire_sip_raises_only_its_parse_error(data):
    from fleet.evidence.wire import sip as wire_sip
    try:
        wire_sip.parse(data)
    except wire_sip.SipParseError:
        pass


def test_hep_evidence_can_be_kept_as_a_pcap_file_that_decodes_back():
    from fleet.evidence.wire.decode import ip_packet
    payloads = [hep.parse(hep.encode(A_ADDR, PROVIDER, T0, register("1001", A_ADDR))),
                hep.parse(hep.encode(("2001:db8::21", 5060), ("2001:db8::1", 5060), T0 + 1, b"SIP/2.0 200 OK\r\n\r\n"))]
    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_RAW)
    for p in payloads:
        w.write(p.t, ip_packet(p.datagram()))
    back = [FrameDecoder().decode(r.t, r.linktype, r.frame) for r in iter_pcap(io.BytesIO(buf.getvalue()))]
    assert back == [p.datagram() for p in payloads]


def test_packet_clock_follows_the_capture_and_keeps_running_when_traffic_stops():
    from fleet.evidence.wire.pipeline import PacketClock
    clock = PacketClock()
    assert clock.now() is None
    clock.saw(T0)
    clock.saw(T0 - 5)            # an older packet never moves the clock back
    now = clock.now()
    assert T0 <= now < T0 + 5


def test_live_streams_can_stamp_observations_on_the_local_clock():
    ev = WireEvidence(Attribution(targets(PHONE_A)), stamp="local")
    skewed = time.time() - 3600          # a router whose clock is an hour behind
    req = register("1001", A_ADDR)
    ev.feed_datagram(Datagram(skewed, A_ADDR, PROVIDER, req))
    obs = ev.feed_datagram(Datagram(skewed + 0.05, PROVIDER, A_ADDR, response(req, 200)))
    assert len(obs) == 1 and abs(obs[0].t - time.time()) < 60, obs
    with pytest.raises(ValueError, match="stamp"):
        WireEvidence(Attribution([]), stamp="router")


def test_async_pcap_stream_from_a_subprocess_stdout(tmp_path):
    from fleet.evidence.wire.pcap import aiter_pcap
    frames = [(T0 + i, eth(A_ADDR, PROVIDER, register("1001", A_ADDR, cseq=i + 1))) for i in range(3)]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap(frames))

    async def read():
        proc = await asyncio.create_subprocess_exec("cat", str(path), stdout=asyncio.subprocess.PIPE)
        got = [r async for r in aiter_pcap(proc.stdout, chunk=50)]
        await proc.wait()
        return got
    got = asyncio.run(read())
    assert [(r.t, r.frame) for r in got] == [(pytest.approx(t), f) for t, f in frames]


def test_a_forked_second_final_answer_and_provisional_answers_change_nothing():
    ev = evidence(PHONE_A)
    req = register("1001", A_ADDR)
    trying = response(req, 100, "Trying")
    ok = response(req, 200, expires=300)
    forked = response(req, 403, "Forbidden").replace(b";tag=srv", b";tag=other-branch")
    obs = run(ev, [(T0, A_ADDR, PROVIDER, req), (T0, PROVIDER, A_ADDR, trying), (T0 + 0.1, PROVIDER, A_ADDR, ok),
                   (T0 + 0.2, PROVIDER, A_ADDR, forked)])
    obs += ev.tick(T0 + 100)
    assert [(o.state, detail_fields(o.detail)["code"]) for o in obs] == [(REGISTERED, "200")]
    assert ev.stats["provisional"] == 1 and ev.stats["duplicate_final"] == 1


def test_attribution_needs_resolved_addresses_and_accepts_any_ipv6_spelling():
    with pytest.raises(ValueError, match="resolve names first"):
        Attribution([WireTarget("0004f2000001", 1, 1, ("voip.provider.example", 5060), "1001")])
    att = Attribution([WireTarget("0004f2000001", 1, 1, ("2001:DB8:0:0::1", 5060), "1001")])
    ev = WireEvidence(att)
    phone, server = ("2001:db8::21", 5060), ("2001:db8::1", 5060)
    req = register("1001", phone, server)
    obs = ev.feed_hep(hep.encode(phone, server, T0, req)) + ev.feed_hep(hep.encode(server, phone, T0, response(req, 200)))
    assert [(o.mac, o.state) for o in obs] == [("0004f2000001", REGISTERED)]


_plain_frames = st.sampled_from([eth(A_ADDR, PROVIDER, _valid_req), eth(PROVIDER, A_ADDR, _valid_ok),
                                 eth(A_ADDR, PROVIDER, b""), eth(A_ADDR, PROVIDER, _valid_req, vlan=7)])


def _mutate_header(args):
    frame, edits = args
    b = bytearray(frame)
    for pos, val in edits:
        b[pos % min(len(b), 60)] = val          # the link, IP and UDP headers
    return bytes(b)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=120), _mutations(),
                 st.tuples(_plain_frames, st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=4))
                 .map(_mutate_header),
                 st.tuples(_plain_frames, st.integers(0, 400)).map(lambda a: a[0][:a[1]])))
def test_fuzz_fast_path_agrees_with_dpkt(frame):
    fast, slow = FrameDecoder(fast_path=True), FrameDecoder(fast_path=False)
    assert fast.decode(T0, LINKTYPE_ETHERNET, frame) == slow.decode(T0, LINKTYPE_ETHERNET, frame)


def test_targets_follow_the_phone_configuration():
    from fleet.evidence.wire.attribution import targets_for
    servers = [{"index": 1, "address": "voip.provider.example", "port": 0, "transport": "DNSnaptr", "register": True},
               {"index": 2, "address": "192.168.10.1", "port": 5080, "register": True},
               {"index": 3, "address": "192.168.10.2", "register": False},
               {"index": 4, "address": "sbc.provider.example", "transport": "TLS"}]
    dns = {"voip.provider.example": ["203.0.113.10", "203.0.113.11"], "sbc.provider.example": ["203.0.113.20"]}
    tg = targets_for("0004f2000001", 1, "1001", servers, lambda name: dns[name])
    assert [(t.server, t.address, t.transport) for t in tg] == [
        (1, ("203.0.113.10", 5060), "udp"), (1, ("203.0.113.11", 5060), "udp"), (2, ("192.168.10.1", 5080), "udp"),
        (4, ("203.0.113.20", 5061), "tls")]
    att = Attribution(tg)
    assert [(u.server, u.reason) for u in att.unobservable()] == [(4, NOT_OBSERVABLE)]
