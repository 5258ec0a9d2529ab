"""When evidence says a phone was registered: stamps that do not drift with a busy collector.

A rollout verifies a phone on a registration newer than its reboot. A syslog line stamped when the
collector's loop got round to it, or a lineInfo answer stamped when it was read, can be hundreds of
milliseconds late under load and so look newer than a reboot sent after the phone said it. Syslog is stamped
with the kernel's receive time (fleet.evidence.sources.udp_reader), lineInfo carries when it was asked
(`sent`), and fleet.rollout.policy counts only evidence from after the reboot was answered.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

from aiohttp import web

from fleet.config.inventory import Credentials, Phone
from fleet.evidence.collector import _Syslog
from fleet.evidence.sources.poller import Poller
from fleet.evidence.sources.udp_reader import open_reader
from fleet.state.observe import from_line_info
from hil import phone_reports

MAC = "0004f2abcdef"


class _Speaks:
    """The collector's source filter, for one phone at 127.0.0.1 (the layer under test is the reader)."""

    def speaks_for(self, host: str) -> set[str]:
        return {MAC} if host == "127.0.0.1" else set()

    def drop(self, host: str, what: str) -> None:
        raise AssertionError(f"dropped {what} from {host}")


async def _sent_held_and_read(port: int, sink: list, hold_s: float) -> tuple[float, float]:
    """Send one registration line, hold the loop `hold_s` (a busy collector), then let it read: (sent, held until)."""
    line = phone_reports.syslog_registration(MAC, "127.0.0.1", 1, 1, "10.0.0.1:5060", True, 60)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        sent = time.time()
        out.sendto(line, ("127.0.0.1", port))
    time.sleep(hold_s)    # blocks the loop: the datagram waits in the socket
    read_from = time.time()
    for _ in range(100):
        if sink:
            break
        await asyncio.sleep(0.01)
    return sent, read_from


async def _until_the_kernel_stamps(port: int, sink: list) -> list[str]:
    """Wait (at most 40 tries of 0.05 s) until a datagram is stamped as it arrives, not as it is read.

    Linux turns receive stamping on for the whole host in deferred work after the first socket asks for it
    (net_enable_timestamp); a datagram that arrives before that work has run is stamped when it is read
    ("race occurred between timestamp enabling and packet receiving", __sock_recv_timestamp). A loaded CI
    machine ran the test inside that window. The collector's first datagrams can fall in it too: they are
    stamped on reading, as before this reader. Returns what each try saw, for the failure message."""
    seen: list[str] = []
    for _ in range(40):
        sent, read_from = await _sent_held_and_read(port, sink, 0.05)
        stamp = sink[0].t if sink else None
        sink.clear()
        seen.append(f"sent {sent:.3f} stamp {stamp} read from {read_from:.3f}")
        if stamp is not None and stamp <= read_from - 0.04:
            break
    return seen


def test_a_syslog_line_read_late_carries_the_moment_it_arrived():
    """The loop is held for 0.4 s after the line arrives (a busy collector): its stamp is the arrival."""
    async def run() -> tuple[float, float, list, list[str]]:
        sink: list = []
        reader = await open_reader("127.0.0.1", 0, _Syslog(sink, _Speaks()))   # type: ignore[arg-type]
        port = reader.get_extra_info("sockname")[1]
        try:
            warm_up = await _until_the_kernel_stamps(port, sink)
            sent, read_from = await _sent_held_and_read(port, sink, 0.4)
        finally:
            reader.close()
        return sent, read_from, sink, warm_up

    sent, read_from, sink, warm_up = asyncio.run(run())
    assert len(sink) == 1 and sink[0].state == "registered", (sink, warm_up)
    assert sent <= sink[0].t <= read_from - 0.35, (sent, sink[0].t, read_from, warm_up)   # held 0.4 s after it


def test_a_line_info_answer_carries_when_it_was_asked():
    """The phone takes 0.4 s to answer: the observation's `sent` is the request, `t` the answer."""
    async def run():
        async def line_info(request: web.Request) -> web.Response:
            await asyncio.sleep(0.4)
            doc, status = phone_reports.rest_line_info("5.9.0", [{"LineNumber": 1, "RegistrationStatus": "Registered",
                                                                   "ProxyAddress": "10.0.0.1", "Port": 5060,
                                                                   "UserID": "1001", "address": "1001@10.0.0.1"}])
            return web.Response(status=status, text=json.dumps(doc), content_type="application/json")
        app = web.Application()
        app.router.add_get("/api/v1/mgmt/lineInfo", line_info)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]   # type: ignore[union-attr]
        phone = Phone(mac=MAC, model="VVX 410", address="127.0.0.1", http_port=port, credentials="admin",
                      firmware_family="uc-5.x", firmware_version="5.9.0")
        try:
            asked = time.time()
            async with Poller(timeout=3) as poller:
                return asked, await poller.poll_one(phone, Credentials(username="Polycom", password="456"))
        finally:
            await runner.cleanup()

    asked, result = asyncio.run(run())
    assert result.ok and result.lines, result
    assert result.sent is not None and asked <= result.sent and result.t >= result.sent + 0.35, (asked, result)
    (obs,) = [o for o in from_line_info(MAC, result.t, result.lines[0], [{"index": 1, "address": "10.0.0.1"}],
                                        result.sent) if o.state == "registered"]
    assert obs.sent == result.sent and obs.t == result.t, obs


def test_a_rest_reboot_is_stamped_when_its_answer_arrived_not_when_the_worker_was_done_with_it():
    """fleet.rollout.work._reboot_left verifies from the phone's answer to the reboot: stamped as the driver
    read it, not after the phone's lock was let go (a Redis round trip, 0.4 s here). A stamp that late missed
    the registration of a phone quick to boot, which then waited for a refresh (bench 1000x2: 65 s, not 27)."""
    import contextlib
    import http.server
    import threading

    from fleet.drivers.control.rest import RestPhone

    doc, status = phone_reports.rest_status("rest-safe-restart")

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:   # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    @contextlib.contextmanager
    def slow_release():
        yield
        time.sleep(0.4)      # the lock let go after the answer

    try:
        phone = Phone(mac=MAC, model="VVX 410", address="127.0.0.1", http_port=server.server_address[1],
                      credentials="admin", firmware_family="uc-5.x", firmware_version="5.9.0")
        rest = RestPhone(phone, Credentials(username="Polycom", password="456"), timeout=3, guard=slow_release)
        asked = time.time()
        rest.restart()
        done = time.time()
    finally:
        server.shutdown()
    assert rest.last_answered is not None and asked <= rest.last_answered <= done - 0.35, (asked, rest.last_answered, done)
