"""The urllib3 transport of the phone REST client and the boot-server publisher (fleet.drivers.lan_http.lan_pool):
what a refused connection, a login Basic cannot carry and an unasked compressed answer become. Each is a typed
error naming the device and nothing of the password (the review of session 19's move off requests)."""
from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.config.inventory import Credentials, Phone
from fleet.drivers.control.rest import RestPhone
from fleet.drivers.errors import AuthRefused, DeviceUnreachable, MalformedAnswer
from fleet.drivers.publish.http_put import HttpPublisher
from soundpoint.redisboot import free_port

JSON = b'{"Status": "2000", "data": {"ModelNumber": "VVX 410", "Firmware": {"Application": "5.9.5.0614"}}}'


def _phone(port: int, **fields) -> Phone:
    return Phone(mac="0004f2abcdef", model="VVX 410", address="127.0.0.1", http_port=port, credentials="admin",
                 firmware_family="uc-5.x", **fields)


class _Server:
    """Answers every GET with `body` and the given headers; `asked` holds each request's Accept-Encoding."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.asked: list[str] = []
        asked = self.asked

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                asked.append(self.headers.get("Accept-Encoding", ""))
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_refused_connection_is_unreachable_not_a_timeout():
    """urllib3 makes a failed connection a kind of its TimeoutError: the phone must still read as refused."""
    port = free_port()          # nothing listens there
    with pytest.raises(DeviceUnreachable) as exc:
        RestPhone(_phone(port), Credentials("Polycom", "456"), timeout=2).device_info()
    assert "connection refused" in str(exc.value) and "no answer within" not in str(exc.value)
    pub = HttpPublisher(f"http://127.0.0.1:{port}/boot/", Credentials("PlcmSpIp", "pw"), 2.0)
    with pytest.raises(Exception) as exc:
        pub.read("0004f2abcdef.cfg")
    assert "cannot connect" in str(exc.value) and "no answer within" not in str(exc.value)


def test_a_login_basic_cannot_carry_is_refused_by_name_and_digest_mode_never_encodes_it():
    password = "pässwörd-€uro"
    with _Server(JSON, {"Content-Type": "application/json"}) as server:
        with pytest.raises(AuthRefused) as exc:
            RestPhone(_phone(server.port), Credentials("Polycom", password), timeout=2).device_info()
        text = str(exc.value)
        assert "Latin-1" in text and "http_auth: digest" in text
        assert "€" not in text and "position" not in text
        # digest mode sends no Basic at all: the phone (which asks nothing here) answers
        info = RestPhone(_phone(server.port, http_auth="digest"), Credentials("Polycom", password), timeout=2).device_info()
        assert info.firmware == "5.9.5.0614"


def test_an_unasked_compressed_answer_is_refused_not_decoded():
    with _Server(gzip.compress(JSON), {"Content-Type": "application/json", "Content-Encoding": "gzip"}) as server:
        with pytest.raises(MalformedAnswer) as exc:
            RestPhone(_phone(server.port), Credentials("Polycom", "456"), timeout=2).device_info()
        assert "compressed" in str(exc.value)
        pub = HttpPublisher(f"http://127.0.0.1:{server.port}/boot/", Credentials(), 2.0)
        with pytest.raises(MalformedAnswer):
            pub.read("0004f2abcdef.cfg")


def test_state_polling_asks_for_no_compression_and_refuses_it():
    """State polling and the web UI (requests) ask for identity, and a compressed answer is refused as malformed
    (requests would have asked for gzip and decoded it, where a drip of empty deflate blocks outlasts the deadline)."""
    from fleet.drivers.control import polling

    body = gzip.compress(b"<PolycomIPPhone><DeviceInformation><MACAddress>0004f2abcdef</MACAddress>"
                         b"</DeviceInformation></PolycomIPPhone>")
    with _Server(body, {"Content-Type": "text/xml", "Content-Encoding": "gzip"}) as server:
        phone = Phone(mac="0004f2abcdef", model="SoundPoint IP 650", address="127.0.0.1", http_port=server.port,
                      credentials="admin", firmware_family="sip-3.x")
        with pytest.raises(MalformedAnswer) as exc:
            polling.device_information(phone, Credentials("Polycom", "456"), timeout=2)
        assert "compressed" in str(exc.value)
        assert server.asked and all(a == "identity" for a in server.asked), server.asked
