"""The UC Software 5 REST driver against every `rest` entry of the conformance corpus, and its firmware rules.

Each entry is served as it is (status, headers, body) by a small HTTP server on a loopback address; the driver
must read every shape the sources allow (v1/v2 callStatus, UpTime text or object, Firmware text or object,
error statuses) and refuse what it cannot read as unknown, never as idle. The firmware version decides the
endpoints: no REST before 5.4 (the family's fallback, with the reason), v2 callStatus only from 5.8.
"""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.drivers.control import rest
from fleet.drivers.errors import AuthRefused, DriverError, MalformedAnswer
from fleet.config.inventory import Credentials, Phone
from fleet.phones import CallCheck, PhoneAccess, control
from sipwire import digest
from soundpoint import conformance

CREDS = Credentials(username="Polycom", password="s3cret-admin")
ENTRIES = conformance.select(area="rest")
# the phone's digest challenge as the corpus has it (rest-auth-challenge-digest), each with a nonce of its own
CHALLENGE = next(e for e in ENTRIES if e.id == "rest-auth-challenge-digest").answer["headers"]["WWW-Authenticate"]


class PhoneServer:
    """Answers each path from `routes` (path -> (status, headers, body)); with `digest_only` it asks every
    request without a valid Digest answer for one, as a phone that wants digest would."""

    def __init__(self, routes: dict[str, tuple[int, dict, str]], digest_only: bool = False) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str, str]] = []      # (method, path, Authorization)
        self.challenges = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                header = self.headers.get("Authorization", "")
                path = self.path.split("?", 1)[0]
                outer.seen.append((self.command, path, header))
                if digest_only and not digest.verify(header, method=self.command,
                                                     password_for=lambda u, r: CREDS.password if u == CREDS.username else None):
                    outer.challenges += 1
                    nonce = 'nonce="%016x"' % (outer.challenges * 7919)
                    self._answer(401, {"WWW-Authenticate": re.sub(r'nonce="[^"]*"', nonce, CHALLENGE)}, "")
                    return
                status, headers, body = outer.routes.get(path, (404, {}, "Not Found"))
                self._answer(status, headers, body)

            def _answer(self, status: int, headers: dict, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def phone(self, **fields) -> Phone:
        return Phone(mac="0004f2abcdef", model="VVX 410", address="127.0.0.1", http_port=self.port,
                     credentials="admin", firmware_family="uc-5.x", **fields)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def served(entry: conformance.Entry) -> tuple[int, dict, str]:
    headers = dict(entry.answer.get("headers") or {})
    if entry.answer.get("content_type"):
        headers["Content-Type"] = entry.answer["content_type"]
    return entry.status_code or 200, headers, entry.body


def some_version(entry: conformance.Entry) -> str:
    """A firmware version inside the entry's range whose endpoints include the entry's (v1 callStatus: before 5.8)."""
    order = ("5.6.0", "5.7.0", "5.4.5") if "/v1/webCallControl" in entry.request.get("path", "") else \
        ("5.8.0", "5.7.0", "5.6.0", "5.4.5", "5.3.0")
    for version in order:
        if conformance.version_in(version, entry.versions):
            return version
    raise AssertionError(f"{entry.id}: no test version in {entry.versions}")


def test_the_corpus_has_every_rest_shape_with_sources():
    ids = {e.id for e in ENTRIES}
    assert len(ENTRIES) >= 20
    assert {"rest-callstatus-v2-idle", "rest-callstatus-v2-in-call", "rest-callstatus-v1-idle",
            "rest-callstatus-v1-in-call", "rest-device-info-5.4", "rest-device-info-5.7", "rest-busy",
            "rest-lineinfo-5.4", "rest-lineinfo-5.7", "rest-config-get", "rest-safe-restart"} <= ids
    for e in ENTRIES:
        assert e.status == "unconfirmed" or e.sources, e.id
        assert all("<path" not in s.ref for s in e.sources), f"{e.id}: a placeholder source"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.id)
def test_the_driver_reads_every_rest_entry(entry: conformance.Entry):
    path = entry.request.get("path", "")
    server = PhoneServer({path: served(entry)})
    try:
        phone = rest.RestPhone(server.phone(), CREDS, timeout=3, firmware=some_version(entry))
        code = entry.status_code or 200
        status = str(json.loads(entry.body).get("Status")) if entry.body.startswith("{") else None
        if 300 <= code < 400:
            # no source shows a redirect: neither followed (its Location is nothing that listens) nor a success
            with pytest.raises(MalformedAnswer):
                phone.device_info()
        elif code == 401:
            with pytest.raises(AuthRefused) as exc:
                phone.device_info()
            assert CREDS.password not in str(exc.value)
        elif code == 404:
            with pytest.raises(rest.RestUnsupported):
                phone._call(entry.request.get("method", "GET"), path)
        elif status not in ("2000", "4007"):
            kind = rest.RestBusy if status == "4001" else rest.RestStatus
            with pytest.raises(kind) as exc:
                phone._call(entry.request.get("method", "GET"), path)
            assert exc.value.code == status and rest.STATUS_TEXT[status] in str(exc.value)
        elif path.endswith("/device/info"):
            info = phone.device_info()
            assert info.mac == "0004f2abcdef" and info.model == "VVX 410"
            assert conformance.version_in(info.firmware, ">=5.4") and info.uptime is not None and info.uptime > 0
        elif path.endswith("/callStatus"):
            calls = phone.call_status()
            assert calls.in_call == ("idle" not in entry.id), calls
            assert all(s and s != "?" for s in calls.states), "every call's state is read"
        elif path.endswith("/lineInfo"):
            lines = phone.line_info()
            assert lines and all(line["LineNumber"] == "1" and line["RegistrationStatus"] in ("registered", "unregistered")
                                 for line in lines)
        elif path.endswith("/config/get"):
            values = phone.config_get(["reg.1.server.1.expires"])
            assert values == {"reg.1.server.1.expires": "3600"} or values == {}
        elif path.endswith(("/safeRestart", "/safeReboot", "/config/set", "/callctrl/dial")):
            phone._call("POST", path)
        else:
            raise AssertionError(f"{entry.id}: no driver call for {path}")
    finally:
        server.close()


@pytest.mark.parametrize("value,seconds", [
    ("0 day 0:55:11", 3311.0), ("2 days 12:44:11", 2 * 86400 + 12 * 3600 + 44 * 60 + 11.0),
    ("3.02:24:46", 3 * 86400 + 2 * 3600 + 24 * 60 + 46.0), ({"Days": "1", "Hours": "0", "Minutes": "0", "Seconds": "5"}, 86405.0),
    ({"Days": -1, "Hours": 0}, None), ({"Days": True}, None), ({}, None), ("x" * 100, None)])
def test_uptime_in_every_source_shape(value, seconds):
    assert rest.parse_uptime(value) == seconds


@pytest.mark.parametrize("doc", [{"Status": "2000"}, {"Status": "2000", "data": None}, {"status": "2000", "Data": []}])
def test_a_success_with_no_calls_listed_is_idle(doc):
    """Posh-UCS iterates `$Output.Data`: an empty list, a null and a missing `data` all mean no call."""
    assert rest.parse_call_status(doc) == rest.CallStatus(())


@pytest.mark.parametrize("doc", [
    {"Status": "2000", "data": {}}, {"Status": "2000", "data": "Idle"},
    {"Status": "2000", "data": [1]}, {"Status": "5000"}, [], "x"])
def test_a_callstatus_nobody_documents_is_malformed_never_idle(doc):
    with pytest.raises(ValueError):
        rest.parse_call_status(doc)


# ------------------------------------------------------------ the control (fleet.phones.ucs5)
def _routes(*entry_ids: str) -> dict[str, tuple[int, dict, str]]:
    out = {}
    for eid in entry_ids:
        e = conformance.get(eid)
        out[e.request["path"]] = served(e)
    return out


@pytest.mark.parametrize("call_entry,state", [("rest-callstatus-v2-idle", "idle"),
                                               ("rest-callstatus-v2-in-call", "in-call"),
                                               ("rest-callstatus-v2-ringing", "in-call")])
def test_uc58_call_check_reads_the_v2_list(call_entry, state):
    """Failed before: the list was read as one object, so idle and in-call were both "unknown"."""
    server = PhoneServer(_routes("rest-device-info-5.7", call_entry))
    try:
        check = control(PhoneAccess(server.phone(), CREDS)).call_check()
        assert check.state == state, check
        assert "v2" in check.reason
        assert [p for _, p, _ in server.seen] == ["/api/v1/mgmt/device/info", "/api/v2/webCallControl/callStatus"]
    finally:
        server.close()


@pytest.mark.parametrize("call_entry,state", [("rest-callstatus-v1-idle", "idle"), ("rest-callstatus-v1-in-call-5.7", "in-call")])
def test_uc57_call_check_uses_v1_and_says_so(call_entry, state):
    """v2 callStatus exists only from 5.8: a 5.7 phone is asked v1 (4007 = no call)."""
    server = PhoneServer(_routes("rest-device-info-5.7", call_entry))
    try:
        phone = server.phone(firmware_version="5.7.0")
        # the corpus's 5.7 body reports 5.8.0.12386: serve a 5.7 one
        info = json.loads(conformance.get("rest-device-info-5.7").body)
        info["data"]["Firmware"]["Application"] = "5.7.0.11768"
        server.routes["/api/v1/mgmt/device/info"] = (200, {"Content-Type": "application/json"}, json.dumps(info))
        check = control(PhoneAccess(phone, CREDS)).call_check()
        assert check.state == state and "v1" in check.reason, check
        assert "/api/v2/webCallControl/callStatus" not in [p for _, p, _ in server.seen]
    finally:
        server.close()


def test_uptime_object_of_uc57_tells_a_lost_reboot_apart():
    """Failed before: `uptime()` read UpTimeSinceLastReboot only and raised on a 5.7+ phone."""
    server = PhoneServer(_routes("rest-device-info-5.7"))
    try:
        assert rest.RestPhone(server.phone(), CREDS).uptime() == 3723.0
    finally:
        server.close()


def test_a_version_mismatch_is_reported_not_guessed():
    server = PhoneServer(_routes("rest-device-info-5.7", "rest-callstatus-v2-idle"))
    try:
        ctl = control(PhoneAccess(server.phone(firmware_version="5.6.0"), CREDS))
        check = ctl.call_check()
        assert check.state == "unknown" and "mismatch" in check.reason and "5.6.0" in check.reason, check
        ident = ctl.identify(3)
        assert not ident.ok and "mismatch" in ident.detail and "5.8.0" in ident.detail, ident
    finally:
        server.close()


POLLING_IDLE = ('<?xml version="1.0"?>\n<PolycomIPPhone><CallLineInfo><LineKeyNum>1</LineKeyNum>'
                '<LineDirNum>1001</LineDirNum><LineState>Inactive</LineState></CallLineInfo></PolycomIPPhone>')


@pytest.mark.parametrize("how", ["inventory", "phone-404"])
def test_rest_below_54_is_refused_with_the_fallback(how, monkeypatch):
    """No REST before UC Software 5.4: the call check falls back to state polling and the reboot to check-sync,
    each saying why. Failed before: the control always used REST (no firmware_version either)."""
    routes = {"/polling/callstateHandler": (200, {"Content-Type": "application/xml"}, POLLING_IDLE)}
    server = PhoneServer(routes, digest_only=True)
    try:
        phone = server.phone(firmware_version="5.3.0") if how == "inventory" else server.phone()
        # state polling in requestor mode: the phone answers its call state in the HTTP response
        ctl = control(PhoneAccess(phone, CREDS, params={"apps.statePolling.responseMode": "0"}))
        check = ctl.call_check()
        assert check.state == "idle" and "REST refused" in check.reason and "state polling" in check.reason, check
        assert ("5.4" in check.reason) if how == "inventory" else ("404" in check.reason)
        sent = []
        monkeypatch.setattr(ctl, "_reboot_check_sync", lambda: sent.append("check-sync"))
        announced = []
        how_rebooted = ctl.reboot(announce=announced.append)
        assert sent == ["check-sync"] and announced == ["check-sync"]
        assert how_rebooted.startswith("sip check-sync (REST refused")
        assert not any(p.endswith("safeRestart") for _, p, _ in server.seen)
    finally:
        server.close()


def test_rest_sends_basic_first_and_answers_a_digest_challenge_once_per_session():
    """Basic as Polycom first (Poly's documented method); a phone that wants digest challenges once, and the
    control's session answers every later request without a new 401. Failed before: digest only, and
    identify() built a second client that took a second challenge."""
    server = PhoneServer(_routes("rest-device-info-5.7", "rest-callstatus-v2-idle"), digest_only=True)
    try:
        ctl = control(PhoneAccess(server.phone(), CREDS))
        assert ctl.identify(3).ok
        for _ in range(4):
            assert ctl.call_check().state == "idle"
        first = server.seen[0][2]
        assert first.startswith("Basic ") and base64.b64decode(first[6:]).decode() == f"Polycom:{CREDS.password}"
        assert server.challenges == 1, f"{server.challenges} challenges for {len(server.seen)} requests"
        assert all(h.startswith("Digest ") for _, _, h in server.seen[2:])
    finally:
        server.close()


def test_http_auth_digest_never_sends_basic_and_basic_never_digest():
    server = PhoneServer(_routes("rest-device-info-5.7"), digest_only=True)
    try:
        rest.RestPhone(server.phone(http_auth="digest"), CREDS).device_info()
        assert not any(h.startswith("Basic") for _, _, h in server.seen)
        server.seen.clear()
        with pytest.raises(AuthRefused):
            rest.RestPhone(server.phone(http_auth="basic"), CREDS).device_info()
        assert all(h.startswith("Basic") for _, _, h in server.seen)
    finally:
        server.close()


def test_an_oversized_or_garbage_answer_is_malformed_not_a_crash():
    big = json.dumps({"Status": "2000", "data": ["x" * 1000] * 400})
    server = PhoneServer({"/api/v1/mgmt/device/info": (200, {}, big),
                          "/api/v1/mgmt/lineInfo": (200, {}, "<html>login</html>")})
    try:
        phone = rest.RestPhone(server.phone(), CREDS)
        with pytest.raises(MalformedAnswer):
            phone.device_info()
        with pytest.raises(MalformedAnswer):
            phone.line_info()
        with pytest.raises(ValueError):
            phone.config_get([f"p{i}" for i in range(21)])
    finally:
        server.close()


def test_control_callcheck_never_raises_on_driver_errors():
    server = PhoneServer({"/api/v1/mgmt/device/info": (500, {}, "oops")})
    try:
        check = control(PhoneAccess(server.phone(), CREDS)).call_check()
        assert isinstance(check, CallCheck) and check.state == "unknown" and "HTTP 500" in check.reason
    finally:
        server.close()
    assert issubclass(rest.RestBusy, DriverError)


# ------------------------------------------------------------ firmware version in the inventory and the lab
def _uc5_inventory(tmp_path, text: str):
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "examples" / "site-uc5.yml"
    path = tmp_path / "inv.yml"
    path.write_text(src.read_text().replace("model: VVX 410, address: 10.40.0.101,", text, 1))
    (tmp_path / "secrets.example.yml").write_text((src.parent / "secrets.example.yml").read_text())
    return path


def test_inventory_firmware_version_is_read_and_layered(tmp_path):
    from fleet.config import inventory

    path = _uc5_inventory(tmp_path, 'model: VVX 410, firmware_version: "5.7.0", address: 10.40.0.101,')
    inv = inventory.load(path)
    assert [p.firmware_version for p in inv.sites[0].phones] == ["5.7.0", None]


@pytest.mark.parametrize("text,words", [('firmware_version: "five"', "expected a version"),
                                        ('firmware_version: "4.0.15"', "is not a uc-5.x version")])
def test_a_bad_firmware_version_names_the_file_and_line(tmp_path, text, words):
    from fleet.config import inventory

    path = _uc5_inventory(tmp_path, f"model: VVX 410, {text}, address: 10.40.0.101,")
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "firmware_version" in t)
    with pytest.raises(Exception) as exc:
        inventory.load(path)
    assert words in str(exc.value) and f"{path.name}:{line}" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("version", ["5.4.5", "5.6.0", "5.7.0", "5.8.0", "5.9.7.3480"])
def test_the_lab_answers_in_the_shapes_of_its_version_and_fleet_reads_them(version):
    from hil import phone_reports as reports

    v2 = conformance.version_in(version, ">=5.8")
    doc, status = reports.rest_device_info(version, "0004f2abcdef", "VVX 410", 93784)
    info = rest.parse_device_info(doc["data"])
    assert status == 200 and info.firmware == version and info.uptime == 93784.0 and info.mac == "0004f2abcdef"
    assert ("UpTime" in doc["data"]) == conformance.version_in(version, ">=5.7")
    idle, _ = reports.rest_call_status(version, v2, [])
    busy, _ = reports.rest_call_status(version, v2, [{"CallState": "Connected", "LineId": 1, "DurationSeconds": 3}])
    assert not rest.parse_call_status(idle).in_call
    assert rest.parse_call_status(busy).states == ("Connected",)
    lines, _ = reports.rest_line_info(version, [{"LineNumber": 1, "RegistrationStatus": "registered", "UserID": "1001",
                                                 "address": "1001@sip.example", "ProxyAddress": "sip.example", "Port": 5060}])
    [line] = rest.parse_line_info(lines)
    assert line["ProxyAddress"] == "sip.example" and line["RegistrationStatus"] == "registered"
    assert ("Username" in line) == conformance.version_in(version, ">=5.7")
    values, _ = reports.rest_config_values({"a.b": "1"})
    assert rest.parse_config_values(values["data"]) == {"a.b": "1"}


def test_lab_file_version_must_fit_the_phone_family():
    from hil import labfile
    from soundpoint.yamlfile import FieldError

    spec = {"name": "v", "net": 98, "firmware_family": "uc-5.x",
            "sites": [{"name": "hq", "phones": {"count": 2, "models": ["VVX 410", "SoundPoint IP 650"],
                                                "families": {"SoundPoint IP 650": "sip-3.x"},
                                                "version_of": {1: "5.7.0"}},
                       "servers": [{"address": "provider"}]}]}
    with pytest.raises((FieldError, ValueError)) as exc:
        labfile.LabFile.model_validate(spec)
    assert "not a sip-3.x version" in str(exc.value)
    spec["sites"][0]["phones"]["version_of"] = {0: "5.3.0"}
    lab = labfile.LabFile.model_validate(spec)
    assert lab.phone_version(0, 0) == "5.3.0" and lab.phone_version(0, 1) == ""


def test_a_site_version_goes_to_the_phones_that_can_run_it_and_one_that_fits_none_is_refused(tmp_path):
    from fleet.config import inventory

    path = _uc5_inventory(tmp_path, "model: VVX 410, address: 10.40.0.101,")
    text = path.read_text().replace("  - name: hq\n", '  - name: hq\n    firmware_version: "5.4.5"\n', 1)
    path.write_text(text)
    assert {p.firmware_version for p in inventory.load(path).sites[0].phones} == {"5.4.5"}
    path.write_text(text.replace('firmware_version: "5.4.5"', 'firmware_version: "3.1.8"'))
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "firmware_version" in t)
    with pytest.raises(Exception) as exc:
        inventory.load(path)
    assert "fits no phone of site hq" in str(exc.value) and f"{path.name}:{line}" in str(exc.value), str(exc.value)


def test_a_refused_admin_login_is_refused_not_possibly_in_a_call():
    """Failed before: a wrong admin password read as state "unknown" ("possibly in a call"), so a rollout deferred
    the phone until its progress deadline. The phone's digest challenge is answered once, refused, and said so."""
    server = PhoneServer(_routes("rest-device-info-5.7", "rest-callstatus-v2-idle"), digest_only=True)
    wrong = Credentials(username="Polycom", password="not-the-admin-password")
    try:
        check = control(PhoneAccess(server.phone(), wrong)).call_check()
        assert check.state == "refused" and not check.may_reboot, check
        assert "wrong credentials" in check.reason and "401 after answering the challenge" in check.reason, check
        assert wrong.password not in check.reason
        # Basic first, then digest answers to its challenge: refused, and nothing more asked of the phone
        asked = [(p, h.split(" ", 1)[0]) for _, p, h in server.seen]
        assert asked[0] == ("/api/v1/mgmt/device/info", "Basic") and len(asked) <= 3, asked
        assert set(asked[1:]) == {("/api/v1/mgmt/device/info", "Digest")}, asked
    finally:
        server.close()
