"""UC Software 5+ REST API (confirmed paths): restart, config set/get, device and line info, dial.

Authentication is digest unless the inventory says the phone needs basic
(`http_auth: basic`): basic sends the admin password in clear, so it is never
tried as a fallback after a 401 (a spoofed phone address would collect it).
Every call has a timeout and raises a typed error naming the phone; a
malformed answer never escapes as a traceback.
"""
from __future__ import annotations

import errno
import re
from collections.abc import Callable

import requests
from requests.auth import AuthBase, HTTPBasicAuth, HTTPDigestAuth

from ...inventory import Credentials, Phone
from ..errors import AuthRefused, DeviceRefused, DeviceTimeout, DeviceUnreachable, MalformedAnswer


def phone_auth(phone: Phone, credentials: Credentials) -> AuthBase:
    """The one authentication this phone gets: digest (answering its challenge), or basic where the inventory says so."""
    if phone.http_auth == "basic":
        return HTTPBasicAuth(credentials.username, credentials.password)
    return HTTPDigestAuth(credentials.username, credentials.password)


class RestPhone:
    def __init__(self, phone: Phone, credentials: Credentials, timeout: float = 5.0,
                 session: requests.Session | None = None) -> None:
        self.phone = phone
        self.name = f"phone {phone.mac} ({phone.address})"
        self.base = f"http://{phone.address}:{phone.http_port}"
        self.session = session or requests.Session()
        self.auth = phone_auth(phone, credentials)
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None):
        try:
            resp = self.session.request(method, self.base + path, json=body, auth=self.auth, timeout=self.timeout)
        except requests.RequestException as exc:
            raise no_answer(self.name, f"{method} {path}", exc, self.timeout) from None
        refuse_error_status(self.name, f"{method} {path}", resp, lambda: auth_hint(self.phone, resp))
        try:
            doc = resp.json()
        except ValueError:
            raise MalformedAnswer(self.name, f"{method} {path}: answer is not JSON") from None
        if not isinstance(doc, dict) or str(doc.get("Status")) != "2000":
            raise DeviceRefused(self.name, f"{method} {path}: status {doc.get('Status') if isinstance(doc, dict) else '?'}")
        return doc.get("data")

    def device_info(self) -> dict:
        data = self._call("GET", "/api/v1/mgmt/device/info")
        if not isinstance(data, dict):
            raise MalformedAnswer(self.name, "device/info data is not an object")
        return data

    def uptime(self) -> float:
        """Seconds since the phone last booted: how a redelivered task tells whether its reboot reached the phone."""
        value = self.device_info().get("UpTimeSinceLastReboot")
        seconds = parse_uptime(value)
        if seconds is None:
            raise MalformedAnswer(self.name, f"device/info UpTimeSinceLastReboot is not an uptime: {str(value)[:40]!r}")
        return seconds

    def restart(self) -> None:
        self._call("POST", "/api/v1/mgmt/safeRestart")

    def config_get(self, names: list[str]) -> dict:
        data = self._call("POST", "/api/v1/mgmt/config/get", {"data": names})
        if not isinstance(data, dict):
            raise MalformedAnswer(self.name, "config/get data is not an object")
        return data

    def call_state(self) -> str:
        data = self._call("GET", "/api/v2/webCallControl/callStatus")
        return str(data.get("CallState", "")) if isinstance(data, dict) else ""

    def dial(self, number: str, line: int = 1) -> None:
        self._call("POST", "/api/v1/callctrl/dial", {"data": {"Dest": number, "Line": str(line), "Type": "TEL"}})


def auth_hint(phone: Phone, resp: requests.Response) -> str:
    """Why a 401 happened, for the operator: wrong credentials, or a phone that asks for the other scheme."""
    asked = resp.headers.get("WWW-Authenticate", "").split(" ", 1)[0].lower()
    if asked and asked != phone.http_auth:
        return (f"the phone asks for {asked} authentication, the inventory says {phone.http_auth}; "
                f"set http_auth: {asked} for it only if it really is that phone")
    return "credentials refused"


def refuse_error_status(name: str, what: str, resp: requests.Response, why_401: Callable[[], str]) -> None:
    """An error status as DeviceRefused naming the device and the request; a 401 says why (`why_401()`)."""
    if resp.status_code == 401:
        raise AuthRefused(name, f"{what}: HTTP 401 ({why_401()})")
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


def no_answer(name: str, what: str, exc: requests.RequestException, timeout: float) -> DeviceTimeout:
    """A request that got no HTTP answer, as the error saying which way: no answer in time, refused, unreachable."""
    if isinstance(exc, requests.Timeout):
        return DeviceTimeout(name, f"{what}: no answer within {timeout:g}s")
    cause = _os_error(exc)
    if cause is not None and cause.errno == errno.ECONNREFUSED:
        return DeviceUnreachable(name, f"{what}: connection refused (nothing listens on that port)")
    if cause is not None and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return DeviceUnreachable(name, f"{what}: no route to the phone ({errno.errorcode[cause.errno]})")
    return DeviceUnreachable(name, f"{what}: {type(exc).__name__}")


_UPTIME = re.compile(r"^\s*(?:(\d+)\s+Days?\s+)?(\d+):(\d{1,2}):(\d{1,2})\s*$", re.IGNORECASE)


def parse_uptime(value: object) -> float | None:
    """`UpTimeSinceLastReboot` in seconds, or None.

    UC Software 5.5 writes "20 Days 16:11:42"; later releases are reported to
    send an object of Days/Hours/Minutes/Seconds, so both are read.
    """
    if isinstance(value, dict):
        try:
            return float(sum(int(value.get(k, 0)) * m for k, m in (("Days", 86400), ("Hours", 3600),
                                                                    ("Minutes", 60), ("Seconds", 1))))
        except (TypeError, ValueError):
            return None
    match = _UPTIME.match(str(value)) if isinstance(value, str) else None
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)
