"""Hostile HTTP answers from a phone (review of issue 16): an answer nested too deeply for the JSON parser, a body
far longer than any phone's, one that drips in a byte at a time. Each is a typed DriverError (or an unreadable
poll) naming the phone; none escapes as RecursionError, none is read whole before its size is checked, none holds
a request (and the phone's lock) open past its budget. A bad polling round does not stop the collector's polling.
Unit tests on loopback HTTP servers; the collector test uses the tests' Redis.
"""
from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Callable

import pytest

from conftest import await_until
from fleet.evidence.collector import SiteCollector
from fleet.evidence.sources import gateway_bindings
from fleet.evidence.sources.formats import parse_line_event
from fleet.evidence.sources.poller import Poller
from fleet.drivers.control import polling, rest, web_ui
from fleet.drivers.device_json import device_json
from fleet.drivers.errors import DeviceTimeout, MalformedAnswer
from fleet.config.inventory import Credentials, Phone
from fleet.phones import PhoneAccess, control
from fleet.state.store import Store
from soundpoint import conformance

CREDS = Credentials(username="Polycom", password="s3cret-admin")
DEEP = b"[" * 5000 + b"]" * 5000          # 10 kB: deeper than the interpreter's recursion limit


class Answering:
    """A loopback HTTP server whose every request is answered by `respond(handler)`; `release` (also the handler's)
    frees a respond that waits (a stalled phone)."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.release = outer.release     # type: ignore[attr-defined]
                try:
                    respond(self)
                except OSError:
                    pass          # the client hung up on a stalled or dripping answer: that is the point

            do_GET = do_POST = _any

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def _head(h: BaseHTTPRequestHandler, length: int, content_type: str = "application/json") -> None:
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(length))
    h.end_headers()


@pytest.fixture
def answering():
    made: list[Answering] = []

    def make(respond) -> Answering:
        made.append(Answering(respond))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _body(body: bytes):
    def respond(h: BaseHTTPRequestHandler) -> None:
        _head(h, len(body))
        h.wfile.write(body)
    return respond


def _uc5(port: int, firmware: str = "5.8.0") -> Phone:
    return Phone(mac="0004f2abcdef", model="VVX 410", address="127.0.0.1", http_port=port, credentials="admin",
                 firmware_family="uc-5.x", firmware_version=firmware)


def _sip3(port: int) -> Phone:
    return Phone(mac="0004f2abcdef", model="SoundPoint IP 650", address="127.0.0.1", http_port=port,
                 credentials="admin", firmware_family="sip-3.x", http_auth="digest")


# ------------------------------------------------------------------ JSON nested too deeply
def test_device_json_turns_too_deep_nesting_into_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        device_json(DEEP)


def test_a_deeply_nested_rest_answer_is_malformed_and_the_call_check_unknown(answering):
    server = answering(_body(DEEP))
    with pytest.raises(MalformedAnswer, match="not JSON"):
        rest.RestPhone(_uc5(server.port), CREDS, timeout=3, firmware="5.8.0").call_status()
    check = control(PhoneAccess(_uc5(server.port), CREDS)).call_check()
    assert check.state == "unknown", check


def test_a_deeply_nested_line_info_is_an_unreadable_poll_not_a_crash(answering):
    server = answering(_body(DEEP))

    async def poll():
        async with Poller(timeout=3) as poller:
            return await poller.poll_one(_uc5(server.port), CREDS)

    result = asyncio.run(poll())
    assert not result.ok and "lineInfo" in result.error, result


def test_a_deeply_nested_gateway_answer_is_unreadable_not_a_crash():
    with pytest.raises(gateway_bindings.GatewayOutputError):
        gateway_bindings.parse_kamailio_json(DEEP.decode())


# ------------------------------------------------------------------ bodies far longer than any phone's
def _stalled_after(sent: int):
    """Announces a 1 GB body, sends `sent` bytes of it and then nothing more until the test ends (a phone, or
    whatever answers at its address, that would have a reader load a gigabyte or wait on it)."""
    def respond(h: BaseHTTPRequestHandler) -> None:
        _head(h, 10 ** 9, "text/xml")
        h.wfile.write(b"x" * sent)
        h.wfile.flush()
        h.release.wait(30)   # type: ignore[attr-defined]
    return respond


def test_state_polling_reads_no_more_than_its_bound_of_a_long_answer(answering):
    server = answering(_stalled_after(polling.MAX_ANSWER + 4096))
    with pytest.raises(MalformedAnswer, match="longer than"):
        polling.polling_in_call(_sip3(server.port), CREDS, timeout=2, digest_only=True)


def test_the_pushed_call_state_request_reads_no_more_than_its_bound(answering):
    server = answering(_stalled_after(polling.MAX_ANSWER + 4096))
    store = SimpleNamespace(pushed_call_state=lambda mac: None)
    with pytest.raises(MalformedAnswer, match="longer than"):
        polling.pushed_call_state(_sip3(server.port), CREDS, store, timeout=2)


def test_the_web_ui_reboot_reads_only_the_start_of_a_long_answer(answering):
    server = answering(_stalled_after(web_ui.LOOKED_AT + 4096))
    phone = Phone(mac="0004f2abcdef", model="SoundPoint IP 650", address="127.0.0.1", http_port=server.port,
                  credentials="admin", firmware_family="uc-4.0")
    web_ui.reboot(phone, CREDS, timeout=2)      # the answer is no login page: the reboot counts as sent


def test_a_login_page_is_found_in_the_bytes_read():
    assert web_ui.is_login_page(b'<html><form action="login"><input type="password"></form></html>')
    assert not web_ui.is_login_page(b"x" * (web_ui.LOOKED_AT + 10) + b'<input type="password">')


# ------------------------------------------------------------------ an answer that drips in
def test_a_dripping_rest_answer_is_cut_off_at_the_requests_budget(answering):
    body = b'{"data": [], "Status": "2000"}' + b" " * 40
    sent: list[int] = []

    def respond(h: BaseHTTPRequestHandler) -> None:
        _head(h, len(body))
        for byte in body:                    # one byte every 0.1 s: never a read timeout, 7 s in all
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            sent.append(byte)
            time.sleep(0.1)

    server = answering(respond)
    phone = rest.RestPhone(_uc5(server.port), CREDS, timeout=0.5, firmware="5.8.0")
    with pytest.raises(DeviceTimeout, match="not complete in time"):
        phone.call_status()
    assert len(sent) < len(body), "the reader waited for the whole dripping answer"


# ------------------------------------------------------------------ the collector's polling loop
def test_the_collectors_polling_survives_a_round_that_fails(redis_url, monkeypatch):
    rounds: list[str] = []

    async def poll(self, phones, modes=None):
        rounds.append("round")
        if len(rounds) == 1:
            raise RecursionError("maximum recursion depth exceeded")   # what a deep answer once raised
        return []

    monkeypatch.setattr(Poller, "poll", poll)
    collector = SiteCollector.__new__(SiteCollector)
    collector.site = SimpleNamespace(name="hostile-poll", phones=[],
                                     collector=SimpleNamespace(poll_concurrency=2, poll_interval=0.05))
    collector.store = Store(redis_url)
    collector.pending = []

    async def run():
        task = asyncio.ensure_future(collector._poll_loop())
        try:
            await await_until(lambda: len(rounds) >= 3 or task.done(), 10, "polling rounds after a failed one",
                              state=lambda: (rounds, task.done() and task.exception()))
            assert not task.done(), f"the polling loop ended: {task.exception()!r}"
        finally:
            task.cancel()

    asyncio.run(run())
    assert len(rounds) >= 3


def test_deeply_nested_xml_is_read_without_recursion():
    """ElementTree parses with expat and walks with iterators: depth costs no recursion (a guard, not a fix: the
    JSON parser is the one that recursed)."""
    deep = b"<PolycomIPPhone>" + b"<a>" * 9000 + b"</a>" * 9000 + b"</PolycomIPPhone>"
    with pytest.raises(MalformedAnswer, match="no line"):
        polling.parse_call_state(deep, "phone under test")
    assert parse_line_event(deep, 1.0) is None


def test_a_digest_challenge_with_a_long_body_is_answered_without_reading_it_all(answering):
    """requests' own digest handling reads a challenge's whole body before answering it; ours reads a few kB."""
    idle = conformance.get("polling-callstate-requestor-idle").body.encode()

    def respond(h: BaseHTTPRequestHandler) -> None:
        if not h.headers.get("Authorization", "").startswith("Digest "):
            h.send_response(401)
            h.send_header("WWW-Authenticate", 'Digest realm="PolycomSPIP", nonce="0123456789abcdef", qop="auth"')
            h.send_header("Content-Length", str(10 ** 9))
            h.end_headers()
            h.wfile.write(b"x" * 70000)
            h.wfile.flush()
            h.release.wait(30)   # type: ignore[attr-defined]
            return
        _head(h, len(idle), "text/xml")
        h.wfile.write(idle)

    server = answering(respond)
    assert polling.polling_in_call(_sip3(server.port), CREDS, timeout=2, digest_only=True) is False
