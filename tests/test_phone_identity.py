"""The phone-control seam's read-only identity check (`identify`, what `fleet inventory check --probe` asks each
phone), one family at a time, against a fake phone web server on loopback. Unit tests: no lab, no Redis.

The fake answers like the firmware does where it matters here: state polling only to its own digest login when
one is configured, the web UI's Basic realm, REST's JSON envelope; and it records every request, so a test can
tell that nothing but reads reached the phone.
"""
from __future__ import annotations

import base64
import json
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from fleet import phones
from fleet.config import inventory
from fleet.sites import probe as site_probe
from fleet.config.inventory import Credentials, Phone
from sipwire import digest
from soundpoint import families

MAC = "0004f2a0b0c1"
ADMIN = Credentials("Polycom", "admin-Secret-41")
POLL_USER, POLL_PASSWORD = "poller", "poll-Secret-77"
POLL_PARAMS = {"apps.statePolling.username": POLL_USER, "apps.statePolling.password": "secret:state_poll"}

DEVICE_XML = (f'<?xml version="1.0"?>\n<PolycomIPPhone><DeviceInformation><MACAddress>{MAC.upper()}</MACAddress>'
              "<PhoneDN>Line1:1001</PhoneDN><AppLoadID>3.2.3.1734</AppLoadID><BootROMID>4.2.2.0710</BootROMID>"
              "<ModelNumber>SoundPoint IP 601</ModelNumber><TimeStamp>2026-11-26T23:00:00</TimeStamp>"
              "</DeviceInformation></PolycomIPPhone>").encode()


@dataclass
class Route:
    """What the fake answers on one path: `login` (user, password) demanded with `scheme`, then `status` and `body`."""
    body: bytes = b""
    status: int = 200
    scheme: str = "digest"              # digest, basic, none
    login: tuple[str, str] = (ADMIN.username, ADMIN.password)
    realm: str = "PolycomSPIP"
    hang: bool = False                  # never answer (the client's timeout fires)
    content_type: str = "application/xml"


@dataclass
class FakePhone:
    routes: dict[str, Route]
    requests: list[tuple[str, str, str]] = field(default_factory=list)   # method, path, Authorization scheme
    port: int = 0


def _handler(fake: FakePhone, release: threading.Event):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _serve(self) -> None:
            header = self.headers.get("Authorization", "")
            fake.requests.append((self.command, self.path, header.split(" ", 1)[0]))
            route = fake.routes.get(self.path)
            if route is None:
                return self._send(404, b"not found", "text/plain")
            if route.hang:
                release.wait(10)
                return
            if route.scheme == "digest":
                ok = header.startswith("Digest ") and digest.verify(
                    header, method=self.command,
                    password_for=lambda u, r: route.login[1] if u == route.login[0] else None) == route.login[0]
                challenge = f'Digest realm="{route.realm}", nonce="{random.getrandbits(64):016x}", qop="auth"'
            elif route.scheme == "basic":
                wanted = "Basic " + base64.b64encode(f"{route.login[0]}:{route.login[1]}".encode()).decode()
                ok = header == wanted
                challenge = f'Basic realm="{route.realm}"'
            else:
                ok, challenge = True, ""
            if not ok:
                return self._send(401, b"", "text/plain", {"WWW-Authenticate": challenge})
            self._send(route.status, route.body, route.content_type)

        def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

    return Handler


@pytest.fixture
def fake_phone():
    """Start a fake phone with the given routes; stopped at the end of the test."""
    servers = []

    def start(routes: dict[str, Route]) -> FakePhone:
        fake = FakePhone(routes)
        release = threading.Event()
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake, release))
        srv.daemon_threads = True
        fake.port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append((srv, release))
        return fake

    yield start
    for srv, release in servers:
        release.set()
        srv.shutdown()
        srv.server_close()


def _phone(family: str, port: int, model: str | None = None, http_auth: str = "digest") -> Phone:
    model = model or sorted(families.get(family).models)[0]
    return Phone(mac=MAC, model=model, address="127.0.0.1", http_port=port, credentials="phone_admin",
                 firmware_family=family, http_auth=http_auth)


def _resolve(name: str, value: str) -> str:
    """The inventory's secrets as Secrets.resolve_param gives them: one known, any other a KeyError."""
    if value != "secret:state_poll":
        raise KeyError(f"credentials {value[7:]!r} not found in the secrets file")
    return POLL_PASSWORD


def _identify(family: str, port: int, params: dict[str, str] | None = None, timeout: float = 2.0) -> phones.Identity:
    access = phones.PhoneAccess(_phone(family, port), ADMIN, dict(params or {}), _resolve)
    return phones.control(access).identify(timeout)


def _no_secret(found: phones.Identity) -> None:
    text = found.describe()
    assert ADMIN.password not in text and POLL_PASSWORD not in text and POLL_USER not in text, text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ SIP 3.x and UC 4.0: state polling


@pytest.mark.parametrize("family", ["sip-3.x", "uc-4.0"])
def test_state_polling_families_are_read_with_the_polling_digest_login(family, fake_phone):
    """The device handler takes only the apps.statePolling login, by digest: the control uses it, read-only."""
    fake = fake_phone({"/polling/deviceHandler": Route(DEVICE_XML, login=(POLL_USER, POLL_PASSWORD))})
    found = _identify(family, fake.port, POLL_PARAMS)
    assert found.ok, found
    assert found.method == "state polling GET /polling/deviceHandler (digest, the apps.statePolling login)"
    assert found.detail == "SoundPoint IP 601, firmware 3.2.3.1734"
    assert [(m, p) for m, p, _ in fake.requests] == [("GET", "/polling/deviceHandler")] * 2   # challenge, answer
    assert [a for _, _, a in fake.requests] == ["", "Digest"]
    _no_secret(found)


def test_sip3_phone_asked_with_the_admin_login_is_an_auth_failure_that_says_which_login(fake_phone):
    """No apps.statePolling login in the inventory: the admin login is tried, the phone refuses it (401)."""
    fake = fake_phone({"/polling/deviceHandler": Route(DEVICE_XML, login=(POLL_USER, POLL_PASSWORD))})
    found = _identify("sip-3.x", fake.port)
    assert (found.ok, found.problem) == (False, "auth")
    assert "admin login (no apps.statePolling.username in the inventory)" in found.method
    assert "HTTP 401" in found.detail and "credentials refused" in found.detail
    wrong = _identify("sip-3.x", fake.port, POLL_PARAMS | {"apps.statePolling.password": "secret:nowhere"})
    assert wrong.problem == "auth", wrong    # an unresolvable secret is an empty password: refused
    _no_secret(found)
    _no_secret(wrong)


@pytest.mark.parametrize("body,why", [
    (b"<html><body>Polycom</body></html>", "not a PolycomIPPhone DeviceInformation document"),
    (b"\x00\xff garbage", "not XML"),
    (b'<PolycomIPPhone><DeviceInformation><ModelNumber>x</ModelNumber></DeviceInformation></PolycomIPPhone>',
     "names no MACAddress"),
    (b"", "not XML"),
])
def test_malformed_device_information_is_reported_not_raised(body, why, fake_phone):
    fake = fake_phone({"/polling/deviceHandler": Route(body, login=(POLL_USER, POLL_PASSWORD))})
    found = _identify("sip-3.x", fake.port, POLL_PARAMS)
    assert found.problem == "malformed" and why in found.detail, found


def test_push_mode_phone_that_takes_the_login_is_reachable_without_an_identity(fake_phone):
    """apps.statePolling.URL set: the phone answers 200 with nothing (the state goes to the URL)."""
    fake = fake_phone({"/polling/deviceHandler": Route(b"", login=(POLL_USER, POLL_PASSWORD))})
    found = _identify("uc-4.0", fake.port, POLL_PARAMS | {"apps.statePolling.URL": "http://127.0.0.1:9/state"})
    assert found.ok and "apps.statePolling.URL" in found.detail, found


def test_another_phone_at_the_address_is_the_wrong_device(fake_phone):
    other = DEVICE_XML.replace(MAC.upper().encode(), b"0004F2FFFFFF").replace(b"IP 601", b"IP 601&#9;[2J&#10;x" * 9)
    fake = fake_phone({"/polling/deviceHandler": Route(other, login=(POLL_USER, POLL_PASSWORD))})
    found = _identify("sip-3.x", fake.port, POLL_PARAMS)
    assert found.problem == "wrong-device" and "'0004F2FFFFFF'" in found.detail, found
    assert found.detail.isprintable() and "SoundPoint IP 601?[2J?x" in found.detail and len(found.detail) < 120, found


def test_no_answer_and_refused_connection_are_told_apart(fake_phone):
    fake = fake_phone({"/polling/deviceHandler": Route(DEVICE_XML, hang=True)})
    slow = _identify("sip-3.x", fake.port, timeout=0.5)
    assert (slow.problem, slow.detail) == ("timeout", "GET /polling/deviceHandler: no answer within 0.5s"), slow
    closed = _identify("uc-4.0", _closed_port())
    assert closed.problem == "refused" and "connection refused" in closed.detail, closed


def test_error_status_is_named(fake_phone):
    fake = fake_phone({"/polling/deviceHandler": Route(b"busy", status=503, scheme="none")})
    found = _identify("sip-3.x", fake.port)
    assert (found.problem, found.detail) == ("error-status", "GET /polling/deviceHandler: HTTP 503"), found


# ------------------------------------------------------------------ UC 5.x: REST


def _rest(data: object, status: str = "2000") -> bytes:
    return json.dumps({"Status": status, "data": data}).encode()


def test_uc5_is_read_through_rest_device_info_with_the_admin_login(fake_phone):
    info = {"ModelNumber": "VVX 410", "MACAddress": MAC, "FirmwareRelease": "5.9.0.9373"}
    fake = fake_phone({"/api/v1/mgmt/device/info": Route(_rest(info), content_type="application/json")})
    found = _identify("uc-5.x", fake.port, POLL_PARAMS)
    assert found.ok and found.detail == "VVX 410, firmware 5.9.0.9373", found
    assert found.method == "REST GET /api/v1/mgmt/device/info (digest, the admin login)"
    assert {(m, p) for m, p, _ in fake.requests} == {("GET", "/api/v1/mgmt/device/info")}
    _no_secret(found)


@pytest.mark.parametrize("body,problem,why", [
    (b"<html>not json</html>", "malformed", "answer is not JSON"),
    (_rest(["a", "list"]), "malformed", "device/info data is not an object"),
    (_rest({"ModelNumber": "VVX 410"}), "malformed", "names no MAC address"),
    (_rest({}, status="4007"), "error-status", "status 4007"),
])
def test_uc5_bad_rest_answers_are_reported(body, problem, why, fake_phone):
    fake = fake_phone({"/api/v1/mgmt/device/info": Route(body, content_type="application/json")})
    found = _identify("uc-5.x", fake.port)
    assert found.problem == problem and why in found.detail, found


def test_uc5_wrong_admin_password_is_auth(fake_phone):
    fake = fake_phone({"/api/v1/mgmt/device/info": Route(_rest({}), login=("Polycom", "other"))})
    found = _identify("uc-5.x", fake.port)
    assert found.problem == "auth" and "HTTP 401" in found.detail, found
    _no_secret(found)


# ------------------------------------------------------------------ SIP 2.x: the web UI


def test_sip2_is_read_through_the_web_ui_basic_realm_only_when_asked(fake_phone):
    fake = fake_phone({"/": Route(b"<html>Polycom</html>", scheme="basic", realm="SPIP Configuration",
                                  content_type="text/html")})
    found = _identify("sip-2.x", fake.port)
    assert found.ok and found.detail == "admin login accepted", found
    assert [a for _, _, a in fake.requests] == ["", "Basic"]      # the password only after the phone asked for it
    assert all(m == "GET" for m, _, _ in fake.requests)
    _no_secret(found)


def test_sip2_unexpected_challenge_gets_no_password(fake_phone):
    fake = fake_phone({"/": Route(b"", scheme="basic", realm="Somewhere else")})
    found = _identify("sip-2.x", fake.port)
    assert found.problem == "malformed" and "nothing sent" in found.detail, found
    assert [a for _, _, a in fake.requests] == [""]


def test_sip2_refused_login_is_auth(fake_phone):
    fake = fake_phone({"/": Route(b"", scheme="basic", realm="SPIP Configuration", login=("Polycom", "456"))})
    found = _identify("sip-2.x", fake.port)
    assert found.problem == "auth" and "admin credentials refused" in found.detail, found


# ------------------------------------------------------------------ the probe goes through the seam


def test_inventory_probe_reads_a_sip3_phone_with_its_state_polling_login(fake_phone, tmp_path):
    """`fleet inventory check --probe`'s phone row: the inventory's polling login (a secret reference) is used,
    the row says how the phone was asked, and neither password is in it."""
    fake = fake_phone({"/polling/deviceHandler": Route(DEVICE_XML, login=(POLL_USER, POLL_PASSWORD))})
    secrets = tmp_path / "secrets.yml"
    secrets.write_text(yaml.safe_dump({"phone_admin": {"username": ADMIN.username, "password": ADMIN.password},
                                       "state_poll": {"password": POLL_PASSWORD}}))
    secrets.chmod(0o600)
    doc = {"name": "t", "firmware_family": "sip-3.x", "secrets_file": str(secrets), "sites": [{
        "name": "hq", "gateway": "127.0.0.1", "boot_server": {"url": "http://127.0.0.1:9/"}, "params": POLL_PARAMS,
        "phones": [{"mac": MAC, "model": "SoundPoint IP 601", "address": "127.0.0.1", "http_port": fake.port,
                    "credentials": "phone_admin"}]}]}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    inv = inventory.load(path)
    site = inv.sites[0]
    row = site_probe.check_phone(site, site.phones[0], inv, inventory.Secrets(inv), 2.0)
    assert row.ok, row
    assert row.detail == ("state polling GET /polling/deviceHandler (digest, the apps.statePolling login): "
                          "SoundPoint IP 601, firmware 3.2.3.1734")
    doc["sites"][0]["params"] = {}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    inv = inventory.load(path)
    row = site_probe.check_phone(inv.sites[0], inv.sites[0].phones[0], inv, inventory.Secrets(inv), 2.0)
    assert not row.ok and ": auth: GET /polling/deviceHandler: HTTP 401" in row.detail, row
    dumped = json.dumps([row.to_dict()])
    assert ADMIN.password not in dumped and POLL_PASSWORD not in dumped
