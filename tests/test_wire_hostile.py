"""Evidence from a hostile LAN (issue 17, points 1 and 4): linear bounded decoding, HEP trust, clocks no packet moves.

Unit level: the shared URI reader, the size caps, the clock guard and the HEP listener's key check, each
fed what an attacker on the LAN sends. The whole collector under a flood is in test_wire_flood.py.
"""
from __future__ import annotations

import ast
import asyncio
import inspect
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import await_until
from fleet.evidence.wire import hep
from fleet.evidence.wire import calls as sip_calls
from fleet.evidence.wire import transactions as sip_transactions
from fleet.evidence.sources.base import DECODE_MESSAGE_COST, Sink, guarded_evidence, with_drops
from fleet.evidence.sources.capture import CaptureThread
from fleet.evidence.sources.hep_source import HEP_MAX_SKEW_S, HepSource
from fleet.evidence.sources.hep_listener import HepListener, start_hep_listener
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.attribution import Attribution
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.evidence.wire import sip as wire_sip
from fleet.evidence.wire.guard import ByteBudget
from fleet.evidence.wire.sip import MAX_HEADER_LINE
from sipwire import message as sipmsg
from soundpoint import conformance
from sipwire import uri as sipuri
from test_wire_evidence import A_ADDR, PHONE_A, PROVIDER, register, response, targets
from linear import python_steps

ROOT = Path(__file__).resolve().parent.parent


# --- one linear URI reader ---------------------------------------------------------------------------------

STEP_BOUND = 100
PATHOLOGICAL = st.lists(st.sampled_from(["sip:", "sips:", "SIP:", "@", ";", ">", "<", ":", "[", "]", "a", "1", " ", ","]),
                        min_size=0, max_size=16000).map("".join)


def test_every_decoder_reads_uris_with_the_one_shared_reader_and_none_with_a_backtracking_pattern():
    assert sip_transactions.uri_user is sipuri.uri_user is sipmsg.uri_user is sip_calls.uri_user
    # the reader itself uses no regular expression at all
    tree = ast.parse(inspect.getsource(sipuri))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "re" not in imported, imported
    # no decoder keeps its own copy of the quadratic user/host patterns
    for path in [*(ROOT / "fleet" / "drivers" / "collect").glob("*.py"), *(ROOT / "sipwire").glob("*.py")]:
        if path.name == "uri.py":      # its docstring names the old pattern
            continue
        text = path.read_text()
        assert 'sips?:([^@;>]+)@' not in text and 'sips?:(?:[^@;>' not in text, path


@settings(max_examples=60, deadline=None)
@given(PATHOLOGICAL)
def test_the_uri_reader_does_a_constant_number_of_python_steps_on_any_input(text):
    """Linear: a constant number of Python steps, each a single C pass (find/partition/lower) over the text;
    the input that cost the old pattern seconds (a header of repeated "sip:") costs what a short one does."""
    # every path through the reader is well under 100 Python lines; a loop over the text would take thousands
    assert python_steps(sipuri.parse_uri, text) <= STEP_BOUND
    assert python_steps(sipuri.uri_user, text) <= STEP_BOUND


def test_the_old_stalling_header_costs_the_uri_reader_what_a_short_one_does():
    for fn in (sipuri.parse_uri, sipuri.uri_user):
        assert python_steps(fn, "sip:" * 15000 + ">") == python_steps(fn, "sip:" * 3 + ">")
        assert python_steps(fn, "<" + "sip:" * 15000) == python_steps(fn, "<" + "sip:" * 3)


@given(user=st.from_regex(r"[A-Za-z0-9_.+-]{0,12}", fullmatch=True),
       host=st.sampled_from(["voip.example", "10.0.0.1", "[2001:db8::1]", "VOIP.Example."]),
       port=st.one_of(st.none(), st.integers(1, 65535)), scheme=st.sampled_from(["sip", "sips", "SIP"]),
       form=st.sampled_from(["{u}", "<{u}>;tag=x", '"Desk 1" <{u}>', "{u};transport=udp", "<{u};lr>"]))
def test_the_uri_reader_reads_user_host_and_port_of_every_form(user, host, port, scheme, form):
    uri = f"{scheme}:{user + '@' if user else ''}{host}{f':{port}' if port else ''}"
    got = sipuri.parse_uri(form.format(u=uri))
    assert got is not None and (got.scheme, got.user, got.host, got.port) == (scheme.lower(), user, host, port)
    assert sipmsg.uri_host_port(form.format(u=uri)) == (host, port or 5060)


def test_the_uri_reader_refuses_what_is_not_a_sip_uri():
    assert sipuri.parse_uri("tel:+15551234") is None and sipuri.uri_user("") == ""
    with pytest.raises(sipmsg.SipParseError):
        sipmsg.uri_host_port("mailto:x@y")


# --- size caps -----------------------------------------------------------------------------------------------

def test_a_register_with_a_header_over_the_cap_is_counted_and_dropped_and_the_next_one_is_read():
    ev = WireEvidence(Attribution(targets(PHONE_A)))
    flood = register("1001", A_ADDR).replace(b"To: <", b"To: " + b"sip:" * 15000 + b"> <")  # 60 KB, the issue's
    assert len(flood) > MAX_HEADER_LINE
    assert ev.feed_datagram(Datagram(time.time(), ("192.168.10.99", 5060), PROVIDER, flood)) == []
    assert ev.stats.get("register_oversize") == 1, ev.stats
    req = register("1001", A_ADDR, cseq=2)
    ev.feed_datagram(Datagram(time.time(), A_ADDR, PROVIDER, req))
    assert len(ev.feed_datagram(Datagram(time.time(), PROVIDER, A_ADDR, response(req, 200, expires=60)))) == 1


# --- clocks no single packet moves -------------------------------------------------------------------------

def _live(max_skew: float | None) -> WireEvidence:
    """The pipeline a live source runs (guarded_evidence), on phone A's targets."""
    stub = SimpleNamespace(wire=targets(PHONE_A), by_mac={}, pipelines={})
    return guarded_evidence("hep" if max_skew else "wire", stub, max_skew)  # type: ignore[arg-type]


def _exchange(ev: WireEvidence, t: float, cseq: int) -> list:
    req = register("1001", A_ADDR, cseq=cseq)
    out = ev.feed_datagram(Datagram(t, A_ADDR, PROVIDER, req))
    return out + ev.feed_datagram(Datagram(t + 0.01, PROVIDER, A_ADDR, response(req, 200, expires=60)))


def test_hep_stamped_a_day_ahead_is_dropped_and_counted_and_later_evidence_keeps_local_time():
    ev = _live(HEP_MAX_SKEW_S)
    now = time.time()
    assert len(_exchange(ev, now, 1)) == 1
    assert _exchange(ev, now + 86400, 2) == []           # the forged future exchange: neither half believed
    assert ev.stats.get("clock_ahead") == 2, ev.stats
    later = _exchange(ev, time.time(), 3)
    assert len(later) == 1 and abs(later[0].t - time.time()) < 5, later
    assert ev.clock.now() is not None and abs(ev.clock.now() - time.time()) < 5


def test_a_capture_whose_clock_steps_back_loses_a_few_packets_then_stamps_evidence_on_our_clock_again():
    ev = _live(None)
    router = time.time() - 40           # a router 40 s behind: its own offset, followed as it is
    for i in range(3):
        assert len(_exchange(ev, router + i, i + 1)) == 1
    stepped = router - 3600             # its clock steps back an hour (NTP fixed it, or someone set it)
    outs = [_exchange(ev, stepped + 3 + i, 10 + i) for i in range(6)]
    assert ev.stats.get("clock_behind", 0) >= 1, ev.stats          # the first packets after the step are dropped
    got = [o for out in outs for o in out]
    assert got, ev.stats                                            # ... then the step is the consensus and followed
    assert all(abs(o.t - time.time()) < 30 for o in got), [(o.t - time.time()) for o in got]


def test_one_packet_from_the_past_does_not_move_a_capture_clock():
    ev = _live(None)
    now = time.time()
    for i in range(3):
        _exchange(ev, now + i * 0.1, i + 1)
    before = ev.clock.offset
    assert _exchange(ev, now - 7200, 9) == [] and ev.stats.get("clock_behind") == 2
    assert ev.clock.offset == pytest.approx(before, abs=1.0)


# --- HEP auth key ------------------------------------------------------------------------------------------

def test_hep_without_the_senders_key_or_with_a_wrong_one_is_dropped_and_counted():
    key = b"s3cret-hep-key"

    async def scenario():
        got = []
        transport, proto = await start_hep_listener("127.0.0.1", 0, ["127.0.0.1"], lambda p, a: got.append(p),
                                                    {"127.0.0.1": key})
        port = transport.get_extra_info("sockname")[1]
        payload = register("1001", A_ADDR)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        try:
            s.sendto(hep.encode(A_ADDR, PROVIDER, time.time(), payload), ("127.0.0.1", port))
            s.sendto(hep.encode(A_ADDR, PROVIDER, time.time(), payload, auth_key=b"guess"), ("127.0.0.1", port))
            s.sendto(hep.encode(A_ADDR, PROVIDER, time.time(), payload, auth_key=key), ("127.0.0.1", port))
            await await_until(lambda: sum(proto.stats.values()) >= 3, 5, "three datagrams counted", step=0.01, fail=False)
            return got, dict(proto.stats), proto.health
        finally:
            s.close()
            transport.close()
    got, stats, health = asyncio.run(scenario())
    assert stats == {"auth_missing": 1, "auth_wrong": 1, "accepted": 1}, stats
    assert len(got) == 1 and got[0].auth_key == key
    assert health.failing() == ""        # 2 of 3 is not yet "most of what it gets" over the minimum sample


def test_a_hep_sender_that_is_mostly_refused_shows_as_a_failing_source():
    from fleet.evidence.wire.guard import DropHealth

    drops = DropHealth()
    for _ in range(30):
        drops.saw("auth_wrong")
    for _ in range(5):
        drops.saw(None)
    health = with_drops({"source": "hep", "running": True, "error": "", "since": None}, drops, [None])
    assert "dropped 30 of 35" in health["error"] and "auth_wrong 30" in health["error"] and health["since"], health


# --- Kamailio's siptrace signs its HEP (real Kamailio) -----------------------------------------------------

@pytest.mark.lab
def test_kamailio_siptrace_sends_the_auth_key_the_lab_sets_and_a_wrong_key_is_refused(tmp_path):
    from soundpoint.redisboot import free_port
    from hil import kamailio as kam
    from test_wire_live import PASSWORD, _register
    from conftest import udp_socket

    reason = kam.unavailable(siptrace=True)
    if reason:
        pytest.skip(reason)
    key = "lab-hep-key-5f2"

    async def scenario():
        got = []
        transport, proto = await start_hep_listener("127.0.0.1", 0, ["127.0.0.1"], lambda p, a: got.append(p),
                                                    {"127.0.0.1": key.encode()})
        hep_port = transport.get_extra_info("sockname")[1]
        port = free_port()
        server = kam.Kamailio(kam.KamailioConfig("127.0.0.1", port, "gateway.example", {"3001": PASSWORD},
                                                 hep=("127.0.0.1", hep_port), hep_auth_key=key,
                                                 role="gateway with a HEP key"), tmp_path / "kamailio")
        server.start()
        try:
            with udp_socket(5.0) as sock:
                codes = await asyncio.to_thread(_register, ("127.0.0.1", port), "3001", PASSWORD, 60, sock)
                await await_until(lambda: proto.stats.get("accepted", 0) >= 4, 10, "Kamailio's HEP accepted",
                                  step=0.05, fail=False)
                accepted = dict(proto.stats)
                proto.auth_keys["127.0.0.1"] = b"another-key"       # the collector expects another key now
                await asyncio.to_thread(_register, ("127.0.0.1", port), "3001", PASSWORD, 60, sock)
                await await_until(lambda: proto.stats.get("auth_wrong", 0) >= 4, 10, "Kamailio's HEP refused",
                                  step=0.05, fail=False)
        finally:
            server.stop()
            transport.close()
        return codes, accepted, dict(proto.stats), got
    codes, accepted, stats, got = asyncio.run(scenario())
    assert codes == [401, 200], codes
    assert accepted.get("accepted", 0) >= 4 and not accepted.get("auth_missing") and not accepted.get("auth_wrong"), accepted
    assert got and all(p.auth_key is not None and p.auth_key.rstrip(b"\0") == key.encode() for p in got)
    assert stats.get("auth_wrong", 0) >= 4 and stats["accepted"] == accepted["accepted"], stats


@pytest.mark.parametrize("entry", conformance.select(area="gateway", prefix="gateway-hep-"), ids=lambda e: e.id)
def test_hep_datagrams_of_the_conformance_corpus_carry_their_key_and_are_judged_by_it(entry):
    """Every HEP datagram a real agent sent (the corpus: Kamailio's siptrace with auth_key) parses, carries the
    key its note names in chunk 14, and the listener accepts it with that key and refuses it with another."""
    data = bytes.fromhex(entry.body)
    pkt = hep.parse(data)
    assert pkt.auth_key == b"corpus-hep-key" and pkt.payload.startswith(b"REGISTER ")
    judged = {}
    for key in (b"corpus-hep-key", b"other-key"):
        listener = HepListener(["127.0.0.1"], lambda p, a: None, {"127.0.0.1": key})
        listener.datagram_received(data, ("127.0.0.1", 9060))
        judged[key] = dict(listener.stats)
    assert judged == {b"corpus-hep-key": {"accepted": 1}, b"other-key": {"auth_wrong": 1}}, judged


def test_the_inventory_names_hep_auth_keys_per_sender_as_secrets():
    from fleet.config.inventory import Capture

    cap = Capture.model_validate({"kind": "hep", "listen": "10.0.0.5:9060", "senders": ["10.0.0.1"],
                                  "auth_keys": {"10.0.0.1": "hep_gateway"}})
    assert cap.auth_keys == {"10.0.0.1": "hep_gateway"}
    for bad, words in (({"senders": ["10.0.0.1"], "auth_keys": {"10.0.0.2": "k"}}, "not one of the HEP senders"),
                       ({"auth_keys": {"gateway": "k"}}, "not an IP address"),
                       ({"auth_keys": {"10.0.0.1": "secret with spaces"}}, "pattern")):
        with pytest.raises(ValueError, match=words):
            Capture.model_validate({"kind": "hep", "listen": "10.0.0.5:9060", **bad})
    with pytest.raises(ValueError, match="auth_keys belong to a hep capture"):
        Capture.model_validate({"kind": "router", "auth_keys": {"10.0.0.1": "k"}})


# --- folded headers, header counts and the per-message budget (review of issue 17's decoding) ---------------

def _folded(pieces: int, piece: bytes = b"ab") -> bytes:
    """A REGISTER with one header folded over `pieces` continuation lines (what Kamailio relays as HEP)."""
    fold = b"X-Fold: x" + b"".join(b"\r\n\t" + piece for _ in range(pieces))
    return register("1001", A_ADDR).replace(b"\r\n\r\n", b"\r\n" + fold + b"\r\n\r\n", 1)


def test_a_folded_header_over_the_line_cap_once_unfolded_is_counted_as_oversize_by_both_parsers():
    flood = _folded(15_000, b"a")                              # 60 KB, no raw line near the cap
    assert len(flood) <= sipmsg.MAX_MESSAGE and max(map(len, flood.split(b"\r\n"))) < 100
    ev = WireEvidence(Attribution(targets(PHONE_A)))
    assert ev.feed_datagram(Datagram(time.time(), ("192.168.10.99", 5060), PROVIDER, flood)) == []
    assert ev.stats.get("register_oversize") == 1, ev.stats
    few = _folded(40, b"c" * 300).replace(b"\r\n\t", b"\r\n ")    # 40 short lines, 12 KB unfolded: over no cap
    long = _folded(60, b"c" * 300)                                # 60 short lines, 18 KB unfolded
    assert wire_sip.parse(few).get("x-fold") == "x " + " ".join(["c" * 300] * 40)
    assert sipmsg.parse(few).get("x-fold") == "x " + " ".join(["c" * 300] * 40)
    with pytest.raises(wire_sip.SipOversizeError):
        wire_sip.parse(long)
    with pytest.raises(sipmsg.SipParseError):
        sipmsg.parse(long)


def test_a_message_with_more_header_lines_than_the_cap_is_counted_as_oversize_by_both_parsers():
    many = register("1001", A_ADDR).replace(b"\r\n\r\n", b"\r\n" + b"X-N: 1\r\n" * wire_sip.MAX_HEADER_LINES
                                            + b"\r\n", 1)
    ev = WireEvidence(Attribution(targets(PHONE_A)))
    assert ev.feed_datagram(Datagram(time.time(), ("192.168.10.99", 5060), PROVIDER, many)) == []
    assert ev.stats.get("register_oversize") == 1, ev.stats
    with pytest.raises(sipmsg.SipParseError):
        sipmsg.parse(many)
    fewer = register("1001", A_ADDR).replace(b"\r\n\r\n", b"\r\n" + b"X-N: 1\r\n" * 200 + b"\r\n", 1)
    assert len(wire_sip.parse(fewer).get_all("x-n")) == 200 and len(sipmsg.parse(fewer).get_all("x-n")) == 200


def test_the_budget_charges_each_message_so_tiny_messages_cannot_take_more_cpu_than_large_ones():
    stub = SimpleNamespace(wire=targets(PHONE_A), by_mac={}, pipelines={})
    ev = guarded_evidence("hep", stub, None)  # type: ignore[arg-type]
    assert ev.budget is not None and ev.budget.per_message == DECODE_MESSAGE_COST > 0
    frozen = ByteBudget(1000.0, 10_000.0, clock=lambda: 0.0, per_message=900)
    taken = sum(frozen.take(100) for _ in range(50))
    assert taken == 10                                            # 10,000 / (100 + 900), not 10,000 / 100


def test_an_answer_naming_both_register_and_invite_is_parsed_once(monkeypatch):
    req = register("1001", A_ADDR)
    answer = response(req, 200, expires=60).replace(b"\r\n\r\n", b"\r\nAllow: INVITE, REGISTER\r\n\r\n", 1)
    answer = answer.replace(b" REGISTER\r\n", b" INVITE\r\n", 1)      # the CSeq: an answer to an INVITE
    assert b"CSeq: 1 INVITE" in answer or b"CSeq: 2 INVITE" in answer, answer
    calls = []
    real = wire_sip.parse
    monkeypatch.setattr(wire_sip, "parse", lambda data: calls.append(1) or real(data))
    ev = WireEvidence(Attribution(targets(PHONE_A)))
    ev.feed_datagram(Datagram(time.time(), PROVIDER, A_ADDR, answer))
    assert len(calls) == 1


# --- a clock guard and drop health per HEP sender ------------------------------------------------------------

def _hep_source():
    observed, kept = [], []
    stub = SimpleNamespace(wire=targets(PHONE_A), by_mac={}, generation=1, pipelines={})
    source = HepSource(SimpleNamespace(name="s"), Sink(observed.extend,  # type: ignore[arg-type]
                                                        lambda _s, d: kept.extend(d)), stub)
    return source, observed, kept


def _hep_exchange(source, sender: str, t: float, cseq: int) -> None:
    req = register("1001", A_ADDR, cseq=cseq)
    for dg in (Datagram(t, A_ADDR, PROVIDER, req), Datagram(t + 0.01, PROVIDER, A_ADDR, response(req, 200, expires=60))):
        source.on_packet(hep.parse(hep.encode(dg.src, dg.dst, dg.t, dg.payload)), (sender, 9060))


def test_two_hep_senders_whose_clocks_differ_by_20_s_are_each_judged_by_their_own_clock():
    source, observed, _ = _hep_source()
    now = time.time()
    for i in range(4):                                          # sender A on our clock, B 20 s behind, interleaved
        _hep_exchange(source, "10.0.0.1", now + i, 2 * i + 1)
        _hep_exchange(source, "10.0.0.2", now - 20 + i, 2 * i + 2)
    stats = source.evidence.stats
    assert not stats.get("clock_behind") and not stats.get("clock_ahead"), stats
    assert len(observed) == 8, (len(observed), stats)
    assert all(abs(o.t - time.time()) < 10 for o in observed), [o.t - time.time() for o in observed]


def test_a_hep_sender_whose_datagrams_are_mostly_dropped_shows_the_source_failing_beside_a_healthy_one():
    source, _, _ = _hep_source()
    now = time.time()
    for i in range(15):
        _hep_exchange(source, "10.0.0.1", now + i * 0.01, 2 * i + 1)              # healthy
        _hep_exchange(source, "10.0.0.2", now - 3600 + i * 0.01, 2 * i + 2)      # an hour behind: over max_skew
    error = source.health()["error"]
    assert "10.0.0.2" in error and "clock_behind" in error and "10.0.0.1" not in error, error


def test_a_hep_source_keeps_only_the_datagrams_it_accepted():
    source, _, kept = _hep_source()
    now = time.time()
    _hep_exchange(source, "10.0.0.1", now, 1)
    _hep_exchange(source, "10.0.0.1", now + 86400, 2)                             # dropped: a day ahead
    flood = register("1001", A_ADDR, cseq=3).replace(b"To: <", b"To: " + b"sip:" * 15000 + b"> <")
    source.on_packet(hep.parse(hep.encode(A_ADDR, PROVIDER, now, flood)), ("10.0.0.1", 9060))   # dropped: oversize
    assert len(kept) == 2 and all(abs(d.t - now) < 1 for d in kept), [(d.t - now, len(d.payload)) for d in kept]


def test_a_capture_source_keeps_only_the_datagrams_it_accepted():
    """The capture path (_WireThread.pump over a pcap stream): a datagram stamped far from the capture's clock
    and one over the size caps are dropped, and neither is kept for the experiment's capture."""
    import io

    from fleet.evidence.wire.pcap import PcapWriter
    from fleet.evidence.wire.decode import LINKTYPE_ETHERNET
    from test_wire_evidence import eth

    kept: list = []
    stub = SimpleNamespace(wire=targets(PHONE_A), by_mac={}, generation=1, pipelines={})
    site = SimpleNamespace(name="s", dns=None)

    class Piped(CaptureThread):
        label = "router capture"

        def run_once(self) -> None:   # pragma: no cover - pump is called directly
            pass

    source = Piped(site, Sink(lambda _o: None, lambda _s, d: kept.extend(d)),  # type: ignore[arg-type]
                   SimpleNamespace(), stub)                                                   # type: ignore[arg-type]
    stream = io.BytesIO()
    pcap = PcapWriter(stream, LINKTYPE_ETHERNET, snaplen=262144)
    now = time.time()
    req = register("1001", A_ADDR, cseq=1)
    for i, (t, src, dst, payload) in enumerate([
            (now, A_ADDR, PROVIDER, req), (now + 0.01, PROVIDER, A_ADDR, response(req, 200, expires=60)),
            (now + 0.02, A_ADDR, PROVIDER, register("1001", A_ADDR, cseq=2)),
            (now + 0.03, A_ADDR, PROVIDER, register("1001", A_ADDR, cseq=3)),
            (now - 7200, A_ADDR, PROVIDER, register("1001", A_ADDR, cseq=4)),                 # an hour off
            (now + 0.04, A_ADDR, PROVIDER, register("1001", A_ADDR, cseq=5).replace(
                b"To: <", b"To: " + b"sip:" * 15000 + b"> <"))]):                            # oversize
        pcap.write(t, eth(src, dst, payload))
    chunks = [stream.getvalue(), None]
    source.pump(lambda _timeout: chunks.pop(0))
    assert len(kept) == 4 and all(abs(d.t - now) < 1 for d in kept), [(d.t - now, len(d.payload)) for d in kept]
    assert source.evidence is not None and source.evidence.stats.get("clock_behind") == 1, source.evidence.stats
