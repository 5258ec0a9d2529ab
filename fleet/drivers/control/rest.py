"""UC Software 5 REST API: restart, config set/get, device and line info, call status, dial.

Answer shapes come from the conformance corpus (soundpoint/conformance/entries/rest): every parser here
accepts each shape the sources show for any firmware from 5.4 on, and refuses anything else as malformed
(a call check that cannot read its answer says "unknown", never "idle").

Firmware: REST exists from UC Software 5.4 (rdbahm/Posh-UCS README); v2 callStatus from 5.8; from 5.7
`device/info` carries `UpTime` and `Firmware` as objects. `RestPhone` takes the phone's version (read from
`device/info` or given by the inventory) and picks the endpoints that version has.

Authentication: `http_auth` unset sends Basic as `Polycom:<password>` first (the documented method: public
clients send it unasked) and answers a Digest challenge with digest for the rest of the session; `digest`
never sends Basic (a spoofed address never sees the password); `basic` sends only Basic. The session and
the digest state live as long as the RestPhone, so a control takes one 401 at most, not one per request.
Every call has a timeout and a size bound and raises a typed error naming the phone; a malformed answer
never escapes as a traceback.
"""
from __future__ import annotations

import errno
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
import urllib3
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.util import make_headers

from soundpoint.conformance import version_in

from fleet.config.inventory import Credentials, Phone
from fleet.phoneconf import firmware
from fleet.phoneconf.firmware import REST_FROM
from fleet.drivers.device_json import device_json
from fleet.drivers.digest_state import DigestState, send_answering
from fleet.drivers.http_body import BoundedDigestAuth, discard_answer, read_answer
from fleet.drivers.lan_http import USER_AGENT, lan_pool
from fleet.drivers.errors import AuthRefused, DeviceRefused, DeviceTimeout, DeviceUnreachable, MalformedAnswer

CALL_STATUS_V2_FROM = "5.8"       # api/v2/webCallControl/callStatus (a list of calls)
MAX_ANSWER = 256 * 1024           # bytes read of one answer; a phone's JSON is a few kB
CONFIG_GET_MAX = 20               # names per config/get (the manual; Posh-UCS refuses more)
OK, NO_CALL = "2000", "4007"
BUSY_RETRIES, BUSY_PAUSE_S = 2, 0.3     # a busy answer (4001) is asked again, at most twice
# the `Status` codes (rdbahm/Posh-UCS Get-UcsStatusCodeString, zloeber/PSVVX PostLoad.ps1)
STATUS_TEXT = {
    "2000": "success", "4000": "invalid input parameters", "4001": "device busy", "4002": "line not registered",
    "4003": "operation not allowed", "4004": "operation not supported", "4005": "line does not exist",
    "4006": "URLs not configured", "4007": "call does not exist", "4008": "configuration export failed",
    "4009": "input size limit exceeded", "4010": "default password not allowed", "5000": "failed to process request",
}


class RestStatus(DeviceRefused):
    """The phone answered with a `Status` other than success; `code` holds it."""

    def __init__(self, device: str, message: str, code: str) -> None:
        super().__init__(device, message)
        self.code = code


class RestBusy(RestStatus):
    """Status 4001: the phone was serving another request (it serves one at a time)."""


class RestUnsupported(DeviceRefused):
    """The phone's firmware has no REST API, or not this endpoint: the caller uses the family's fallback."""


def call_status_v2(version: str) -> bool:
    return version_in(version, f">={CALL_STATUS_V2_FROM}")


def uses_rest(phone: Phone) -> bool:
    """Whether fleet talks REST to this phone (fleet.phoneconf.firmware.uses_rest on its family and version)."""
    return firmware.uses_rest(phone.family, phone.firmware_version)


def uses_state_polling(phone: Phone) -> bool:
    """Whether call checks on this phone read state polling (fleet.phoneconf.firmware.uses_state_polling)."""
    return firmware.uses_state_polling(phone.family, phone.firmware_version)


# ------------------------------------------------------------ answer parsing (pure: tested against the corpus)
def _key(obj: dict, name: str):
    """`obj[name]` with the key matched case-insensitively (the PowerShell clients that show most shapes do not
    tell case), or None."""
    if name in obj:
        return obj[name]
    low = name.lower()
    return next((v for k, v in obj.items() if isinstance(k, str) and k.lower() == low), None)


_VERSION = re.compile(r"\d+\.\d+(?:\.\d+){0,2}")
_UPTIME_DAYS = re.compile(r"^\s*(?:(\d+)\s+days?\s+)?(\d+):(\d{1,2}):(\d{1,2})\s*$", re.IGNORECASE)
_UPTIME_DOTTED = re.compile(r"^\s*(\d+)\.(\d{1,2}):(\d{1,2}):(\d{1,2})\s*$")


def parse_uptime(value: object) -> float | None:
    """An uptime in seconds, or None: text ("20 Days 16:11:42", "0 day 0:55:11", "3.02:24:46", "0:07:09", as
    UC Software before 5.7 writes `UpTimeSinceLastReboot`) or the 5.7+ `UpTime` object (Days, Hours, Minutes,
    Seconds, as numbers or digit strings)."""
    if isinstance(value, dict):
        parts = [_key(value, k) for k in ("Days", "Hours", "Minutes", "Seconds")]
        if all(p is None for p in parts):
            return None
        try:
            numbers = [int(p or 0) if not isinstance(p, bool) else None for p in parts]
        except (TypeError, ValueError):
            return None
        if None in numbers or min(numbers) < 0:  # type: ignore[type-var]
            return None
        d, h, m, s = numbers  # type: ignore[misc]
        return float(d * 86400 + h * 3600 + m * 60 + s)
    if not isinstance(value, str) or len(value) > 64:
        return None
    match = _UPTIME_DAYS.match(value) or _UPTIME_DOTTED.match(value)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)


@dataclass(frozen=True)
class DeviceInfo:
    """What `device/info` says, in either firmware shape."""
    mac: str
    model: str
    firmware: str          # the application version ("5.8.0.12386"), "" when the answer names none
    uptime: float | None   # seconds since boot, None when the answer has no readable uptime


def parse_device_info(data: object) -> DeviceInfo:
    """`device/info` data: `FirmwareRelease` text (5.4-5.6) or `Firmware.Application` (5.7+), and
    `UpTimeSinceLastReboot` text or `UpTime` object. ValueError when it is not an object."""
    if not isinstance(data, dict):
        raise ValueError("device/info data is not an object")
    firmware = _key(data, "Firmware")
    text = _key(firmware, "Application") if isinstance(firmware, dict) else firmware
    if text is None:
        text = _key(data, "FirmwareRelease")
    found = _VERSION.search(text) if isinstance(text, str) else None
    uptime = _key(data, "UpTime")
    if uptime is None:
        uptime = _key(data, "UpTimeSinceLastReboot")
    return DeviceInfo(mac=str(_key(data, "MACAddress") or ""), model=str(_key(data, "ModelNumber") or ""),
                      firmware=found.group(0) if found else "", uptime=parse_uptime(uptime))


@dataclass(frozen=True)
class CallStatus:
    """The phone's calls: none (idle), or each call's `CallState` (a phone with any call is in a call)."""
    states: tuple[str, ...]

    @property
    def in_call(self) -> bool:
        return bool(self.states)


def parse_call_status(doc: object) -> CallStatus:
    """A callStatus answer, v1 or v2: `data` a list of calls (v2: empty when idle), one call object (v1 in a
    call), or Status 4007 "call does not exist" (v1 idle). A success whose `data` is absent or null is idle too:
    the only source (Posh-UCS) iterates `$Output.Data`, which does nothing for an empty list, a null or a missing
    member alike, so all three are shapes it allows (corpus rest-callstatus-v2-idle*, unconfirmed). ValueError for
    anything else: a check that cannot read the answer must not call the phone idle."""
    if not isinstance(doc, dict):
        raise ValueError("callStatus answer is not an object")
    status = str(_key(doc, "Status"))
    if status == NO_CALL:
        return CallStatus(())
    if status != OK:
        raise ValueError(f"callStatus Status {status[:10]!r}")
    data = _key(doc, "data")
    if data is None:
        return CallStatus(())
    calls = data if isinstance(data, list) else [data] if isinstance(data, dict) and data else None
    if calls is None:
        raise ValueError("callStatus data is neither a list of calls nor a call")
    if not all(isinstance(c, dict) for c in calls):
        raise ValueError("callStatus data holds something that is not a call")
    return CallStatus(tuple(str(_key(c, "CallState") or "?")[:40] for c in calls))


LINE_FIELDS = ("LineNumber", "RegistrationStatus", "ProxyAddress", "SIPAddress", "Username", "UserID", "Label")


def parse_line_info(doc: object) -> list[dict]:
    """lineInfo data: one object per line (5.4-5.6 `SIPAddress`, 5.7+ `Username`), its fields under their
    canonical names. ValueError when the answer is not a success with a list."""
    if not isinstance(doc, dict) or str(_key(doc, "Status")) != OK:
        raise ValueError("lineInfo answer is not a success")
    data = _key(doc, "data")
    if not isinstance(data, list):
        raise ValueError("lineInfo data is not a list")
    out = []
    for line in data:
        if isinstance(line, dict):
            out.append({f: v for f in LINE_FIELDS if (v := _key(line, f)) is not None})
    return out


def parse_config_values(data: object) -> dict[str, str]:
    """config/get data: each name to its value. 5.x answers `{"name": {"Value": ..., "Source": ...}}`
    (rdbahm/Posh-UCS reads .Value/.Source); a bare value is taken as it is."""
    if not isinstance(data, dict):
        raise ValueError("config/get data is not an object")
    out = {}
    for name, entry in data.items():
        value = _key(entry, "Value") if isinstance(entry, dict) else entry
        out[str(name)] = "" if value is None else str(value)
    return out


# ------------------------------------------------------------ the client
class _SessionAuth:
    """Basic first (unless the inventory says digest), digest once the phone challenges with digest: the
    digest state (nonce, count) lives here, per RestPhone, so later requests carry it without a new 401."""

    def __init__(self, mode: str | None, credentials: Credentials) -> None:
        self.mode = mode                      # None: basic first, "basic", "digest"
        self.credentials = credentials
        self._basic: str | None = None        # worked out when first sent (never in digest mode)
        self.digest = DigestState(credentials.username, credentials.password)
        self.digest_known = mode == "digest"

    def header(self, method: str, url: str) -> str | None:
        """The Authorization for the next request: Basic, or the answer to the phone's digest challenge once
        known (none before the first challenge in digest mode: the password never goes out as Basic).
        UnicodeEncodeError: a login Basic cannot carry (Latin-1 only, as requests encoded it too)."""
        if not self.digest_known:
            if self._basic is None:
                creds = self.credentials
                self._basic = make_headers(basic_auth=f"{creds.username}:{creds.password}")["authorization"]
            return self._basic
        return self.digest.answer(method, url) if self.digest.holds_nonce else None

    def take_challenge(self, header: str) -> bool:
        """The phone asked for digest after Basic: take its challenge (so the retry answers it at once); False
        when there is nothing to change (digest refused, Basic asked for, basic only, or no usable challenge)."""
        scheme, _, _ = header.partition(" ")
        if scheme.lower() != "digest" or self.mode == "basic" or self.digest_known:
            return False
        if not self.digest.take(header):
            return False
        self.digest_known = True
        return True


def phone_auth(phone: Phone, credentials: Credentials) -> AuthBase:
    """The authentication for state polling and the web UI: digest (answering its challenge), or basic where the
    inventory says so."""
    if phone.http_auth == "basic":
        return HTTPBasicAuth(credentials.username, credentials.password)
    return BoundedDigestAuth(credentials.username, credentials.password)


class RestPhone:
    """One phone's REST client: one keep-alive connection and one authentication state for its life, requests one
    at a time (`guard`, e.g. the per-phone Redis lock, wraps each), endpoints chosen by `firmware` (the phone's
    version; "" until known)."""

    def __init__(self, phone: Phone, credentials: Credentials, timeout: float = 5.0, firmware: str = "",
                 guard: Callable[[], object] | None = None) -> None:
        self.phone = phone
        self.name = f"phone {phone.mac} ({phone.address})"
        self.base = f"http://{phone.address}:{phone.http_port}"
        # urllib3 itself, one keep-alive connection (fleet.drivers.lan_http.lan_pool): no proxy or ~/.netrc from the
        # environment, no redirect followed or read
        self.pool = lan_pool(self.base, timeout)
        self.auth = _SessionAuth(phone.http_auth, credentials)
        self.sent_digest = False               # the last request carried a digest answer (a 401 then: a wrong login)
        self.timeout = timeout
        self.firmware = firmware
        self.guard = guard
        self.challenges = 0                    # 401 answers taken (a steady control takes at most one)
        self.last_answered: float | None = None   # when the last answer's head arrived (a reboot's: fleet.phones.ucs5)

    # -------------------------------------------------------- transport
    def _send(self, method: str, path: str, body: dict | None, timeout: float) -> urllib3.BaseHTTPResponse:
        """One request as the session's authentication stands; in digest, a challenge (the first in digest mode, a
        stale nonce) answered once at once, as requests' digest handling did."""
        url = self.base + path
        data = json.dumps(body, allow_nan=False).encode() if body is not None else None
        try:
            authorization = self.auth.header(method, url)
        except UnicodeEncodeError:
            # the message names no character of the password (the encoder's own would show one and its place)
            raise AuthRefused(self.name, f"{method} {path}: the login cannot be sent as Basic (a character outside "
                                         "Latin-1); set http_auth: digest for this phone") from None
        try:
            resp, _ = send_answering(lambda auth: self._once(method, path, data, auth, timeout),
                                     self.auth.digest if self.auth.digest_known else None, method, url,
                                     authorization, lambda answered: discard_answer(answered, self.name, timeout))
            return resp
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise no_answer(self.name, f"{method} {path}", exc, timeout) from None

    def _once(self, method: str, path: str, data: bytes | None, authorization: str | None,
              timeout: float) -> urllib3.BaseHTTPResponse:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if authorization:
            headers["Authorization"] = authorization
        self.sent_digest = bool(authorization) and authorization.lower().startswith("digest")
        resp = self.pool.urlopen(method, path, body=data, headers=headers, retries=False, redirect=False,
                                 preload_content=False, release_conn=False,
                                 timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self.last_answered = time.time()   # stamped here: not after the lock's release and the body's parse
        return resp

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None,
              accept: tuple[str, ...] = (OK,)) -> dict:
        """The answer document of one request whose Status is in `accept`; typed errors otherwise."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                if self.guard is None:
                    return self._call_unguarded(method, path, body, timeout or self.timeout, accept)
                with self.guard():  # type: ignore[attr-defined]
                    return self._call_unguarded(method, path, body, timeout or self.timeout, accept)
            except RestBusy:
                # busy: the phone did not act on it, so asking again is safe; someone without the lock
                # (an operator's tool) was talking to it
                if attempt == BUSY_RETRIES:
                    raise
                time.sleep(BUSY_PAUSE_S * (attempt + 1))
        raise AssertionError("unreachable")

    def _call_unguarded(self, method: str, path: str, body: dict | None, timeout: float,
                        accept: tuple[str, ...]) -> dict:
        """One request, the retry after a challenge included, done within `request_budget(timeout)` in total: the
        phone's lock (fleet.state.lease.PhoneRestLock, renewed while held) is held for no longer than that."""
        what = f"{method} {path}"
        deadline = time.monotonic() + request_budget(timeout)
        resp = self._send(method, path, body, timeout)
        if resp.status == 401:
            self.challenges += 1
            if self.auth.take_challenge(resp.headers.get("WWW-Authenticate", "")):
                discard_answer(resp, self.name, max(0.0, min(timeout, deadline - time.monotonic())))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceTimeout(self.name, f"{what}: no answer within {request_budget(timeout):g}s in all")
                resp = self._send(method, path, body, min(timeout, left))
                if resp.status == 401:
                    self.challenges += 1
        raw = read_answer(resp, MAX_ANSWER, self.name, what, deadline)
        if resp.status == 401:
            after = " after answering the challenge" if self.sent_digest else ""
            raise AuthRefused(self.name, f"{what}: HTTP 401{after} ({auth_hint(self.phone, resp)})")
        if len(raw) > MAX_ANSWER:
            raise MalformedAnswer(self.name, f"{what}: answer longer than {MAX_ANSWER} bytes")
        try:
            doc = device_json(raw)
        except ValueError:
            doc = None
        status = str(_key(doc, "Status")) if isinstance(doc, dict) and _key(doc, "Status") is not None else None
        if status is None:
            if resp.status == 404:
                raise RestUnsupported(self.name, f"{what}: HTTP 404 (no REST API: firmware before UC Software "
                                                 f"{REST_FROM}, apps.restapi.enabled=0, or an endpoint this "
                                                 f"firmware lacks)")
            if resp.status >= 400:
                raise DeviceRefused(self.name, f"{what}: HTTP {resp.status}")
            raise MalformedAnswer(self.name, f"{what}: answer is not JSON" if doc is None else
                                  f"{what}: answer is a JSON {type(doc).__name__} without a Status")
        if status in accept:
            return doc  # type: ignore[return-value]
        text = f"{what}: status {status[:10]} ({STATUS_TEXT.get(status, 'unknown status')})"
        if status == "4001":
            raise RestBusy(self.name, text + ": it serves one request at a time", status)
        raise RestStatus(self.name, text, status)

    # -------------------------------------------------------- endpoints
    def device_info(self, timeout: float | None = None) -> DeviceInfo:
        doc = self._call("GET", "/api/v1/mgmt/device/info", timeout=timeout)
        try:
            info = parse_device_info(_key(doc, "data"))
        except ValueError as exc:
            raise MalformedAnswer(self.name, f"device/info: {exc}") from None
        if info.firmware:
            self.firmware = info.firmware
        return info

    def uptime(self) -> float:
        """Seconds since the phone last booted: how a redelivered task tells whether its reboot reached the phone."""
        info = self.device_info()
        if info.uptime is None:
            raise MalformedAnswer(self.name, "device/info names no uptime it can read (UpTime/UpTimeSinceLastReboot)")
        return info.uptime

    def restart(self) -> None:
        self._call("POST", "/api/v1/mgmt/safeRestart")

    def config_get(self, names: list[str]) -> dict[str, str]:
        if len(names) > CONFIG_GET_MAX:
            raise ValueError(f"config/get takes at most {CONFIG_GET_MAX} names, not {len(names)}")
        doc = self._call("POST", "/api/v1/mgmt/config/get", {"data": names})
        try:
            return parse_config_values(_key(doc, "data"))
        except ValueError as exc:
            raise MalformedAnswer(self.name, str(exc)) from None

    def config_set(self, values: dict[str, str]) -> None:
        self._call("POST", "/api/v1/mgmt/config/set", {"data": values})

    def call_status(self) -> CallStatus:
        """The phone's calls by the endpoint its firmware has: v2 (a list) from 5.8, v1 before; the firmware is
        read from device/info first when not known."""
        if not self.firmware:
            self.device_info()
        path = "/api/v2/webCallControl/callStatus" if call_status_v2(self.firmware) else \
            "/api/v1/webCallControl/callStatus"
        doc = self._call("GET", path, accept=(OK, NO_CALL))
        try:
            return parse_call_status(doc)
        except ValueError as exc:
            raise MalformedAnswer(self.name, f"GET {path}: {exc}") from None

    def line_info(self) -> list[dict]:
        doc = self._call("GET", "/api/v1/mgmt/lineInfo")
        try:
            return parse_line_info(doc)
        except ValueError as exc:
            raise MalformedAnswer(self.name, str(exc)) from None

    def dial(self, number: str, line: int = 1) -> None:
        self._call("POST", "/api/v1/callctrl/dial", {"data": {"Dest": number, "Line": str(line), "Type": "TEL"}})


def request_budget(timeout: float) -> float:
    """The most one REST request may take in all, for a per-operation `timeout`: the first send, the send after a
    digest challenge, and the body, each bounded by `timeout` (one read of the body may start just before the
    deadline, so the request ends by budget + timeout at worst)."""
    return 3 * timeout


def auth_hint(phone: Phone, resp: requests.Response | urllib3.BaseHTTPResponse) -> str:
    """Why a 401 happened, for the operator: wrong credentials, or a phone that asks for the other scheme."""
    asked = resp.headers.get("WWW-Authenticate", "").split(" ", 1)[0].lower()
    if asked and phone.http_auth and asked != phone.http_auth:
        return (f"the phone asks for {asked[:20]} authentication, the inventory says {phone.http_auth}; "
                f"set http_auth: {asked[:20]} for it only if it really is that phone")
    return "credentials refused"


def after_challenge(resp: requests.Response) -> str:
    """" after answering the challenge" when the refused request carried a digest answer: the phone saw the login
    and refused it (a wrong password), not a request sent without one; "" otherwise."""
    sent = resp.request.headers.get("Authorization", "") if resp.request is not None else ""
    return " after answering the challenge" if str(sent).lower().startswith("digest") else ""


def refuse_error_status(name: str, what: str, resp: requests.Response, why_401: Callable[[], str]) -> None:
    """An error status as DeviceRefused naming the device and the request; a 401 says why (`why_401()`)."""
    if resp.status_code == 401:
        raise AuthRefused(name, f"{what}: HTTP 401{after_challenge(resp)} ({why_401()})")
    if resp.status_code >= 400:
        raise DeviceRefused(name, f"{what}: HTTP {resp.status_code}")


def _os_error(exc: BaseException | None, depth: int = 0) -> OSError | None:
    """The socket error under a requests/urllib3 exception (they nest it in args, `reason` and causes)."""
    if exc is None or depth > 6:
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    inner = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
    for nxt in (getattr(exc, "reason", None), exc.__cause__, exc.__context__, *inner):
        if isinstance(nxt, BaseException):
            found = _os_error(nxt, depth + 1)
            if found is not None:
                return found
    return None


def no_answer(name: str, what: str, exc: BaseException, timeout: float) -> DeviceTimeout:
    """A request that got no HTTP answer (requests' or urllib3's error), as the error saying which way: no answer in
    time, refused, unreachable. urllib3 makes a connection that failed (NewConnectionError: refused, no route, a
    name that does not resolve) a subclass of its TimeoutError; it is told by its socket error, as requests does."""
    connect_failed = isinstance(exc, urllib3.exceptions.NewConnectionError)
    if not connect_failed and isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return DeviceTimeout(name, f"{what}: no answer within {timeout:g}s")
    cause = _os_error(exc)
    if cause is not None and cause.errno == errno.ECONNREFUSED:
        return DeviceUnreachable(name, f"{what}: connection refused (nothing listens on that port)")
    if cause is not None and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return DeviceUnreachable(name, f"{what}: no route to the phone ({errno.errorcode[cause.errno]})")
    return DeviceUnreachable(name, f"{what}: {type(exc).__name__}")
