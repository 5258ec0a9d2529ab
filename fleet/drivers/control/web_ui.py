"""The web configuration utility: its reboot, POST /form-submit/Reboot (UC Software 4.x; corpus area `web-ui`),
and a read of its home page (a reachability check for phones that have nothing else to ask, SIP 2.x).

The login goes first as HTTP Basic, as the public client that drives real phones' web UIs sends it
(rdbahm/Posh-UCS:Posh-UCS/UcsWebUtil.psm1, realm "SPIP Configuration"); a phone that challenges
for digest instead gets digest. An answer is never proof of a reboot: the reboot answer's body is
printed nowhere (corpus web-ui-reboot-accepted), and a web UI that did not take the login may
answer its login page with 200 (web-ui-login-page). A 200 login page is refused here as a login
the phone did not take; any other answer means "sent", and the rollout counts the reboot only
when the phone re-registers after it (fleet.rollout.policy.advance) or its uptime says so.
"""
from __future__ import annotations

import re
import time

import requests
from requests.auth import HTTPBasicAuth

from sipwire import digest
from sipwire.message import SipParseError

from fleet.config.inventory import Credentials, Phone
from fleet.drivers.errors import AuthRefused, DeviceRefused, MalformedAnswer
from fleet.drivers.lan_http import lan_request
from fleet.drivers.control.rest import no_answer, read_answer, refuse_error_status

REBOOT_PATH = "/form-submit/Reboot"
HOME_PATH = "/"
REALM = "SPIP Configuration"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}   # as Posh-UCS's Restart-UcsWebPhone posts it
_LOGIN_PAGE = re.compile(rb"<input[^>]*type\s*=\s*[\"']?password|<form[^>]*login|<title>[^<]*log\s*in", re.I)


LOOKED_AT = 65536          # bytes of an answer read: enough for any login page, and all that is ever read


def is_login_page(body: bytes) -> bool:
    """Whether a 2xx answer's body is the web UI's login page (an HTML form asking for a password), not an accepted
    request. Only the first LOOKED_AT bytes are looked at."""
    body = body[:LOOKED_AT]
    return b"<" in body and bool(_LOGIN_PAGE.search(body))


def _body(resp: requests.Response, name: str, what: str, timeout: float) -> bytes:
    """The first LOOKED_AT (+1) bytes of a streamed answer, read within `timeout` in all; the rest is never read."""
    return read_answer(resp, LOOKED_AT, name, what, time.monotonic() + timeout)


def _request(method: str, phone: Phone, credentials: Credentials, path: str, timeout: float) -> tuple[requests.Response, bool]:
    """One request to the web UI; the answer (streamed: its body read only by `_body`) and whether a login was sent.

    The reboot (POST) sends the admin login as Basic at once, as Posh-UCS does, and answers a digest challenge
    once; a read (GET) goes without a login first and sends it only as the phone asks: Basic in the web UI's realm,
    or digest (a read-only check need not hand the password to whatever answers at the address)."""
    name = f"phone {phone.mac} ({phone.address})"
    url = f"http://{phone.address}:{phone.http_port}{path}"
    headers = dict(FORM) if method == "POST" else {}
    try:
        if method == "POST":
            first = lan_request(method, url, auth=HTTPBasicAuth(credentials.username, credentials.password),
                                     timeout=timeout, headers=headers, stream=True)
        else:
            first = lan_request(method, url, timeout=timeout, headers=headers, stream=True)
        if first.status_code != 401:
            return first, method == "POST"
        asked = first.headers.get("WWW-Authenticate", "")
        scheme = asked.split(" ", 1)[0].lower()
        if scheme == "basic" and method == "POST":
            return first, True          # the Basic login was refused: refuse_error_status says so
        first.close()                   # a challenge: its body is never read
        if scheme == "basic" and f'realm="{REALM}"' in asked:
            return lan_request(method, url, auth=HTTPBasicAuth(credentials.username, credentials.password),
                                    timeout=timeout, headers=headers, stream=True), True
        if scheme != "digest":
            raise MalformedAnswer(name, f"{method} {path}: the phone asks for {asked[:60]!r}, not the web UI's "
                                        f"Basic realm {REALM!r} or digest; nothing sent")
        try:            # answer the challenge the phone sent, in one request
            answer = digest.authorization(digest.parse_challenge(asked), username=credentials.username,
                                          password=credentials.password, method=method, uri=path)
        except SipParseError:
            raise MalformedAnswer(name, f"{method} {path}: the phone's digest challenge cannot be read") from None
        return lan_request(method, url, timeout=timeout, headers={**headers, "Authorization": answer},
                                stream=True), True
    except requests.RequestException as exc:
        raise no_answer(name, f"{method} {path}", exc, timeout) from None


def reboot(phone: Phone, credentials: Credentials, timeout: float = 5.0) -> None:
    """Send the web UI's reboot. Returns when the phone took the request; that is not a reboot until the phone
    re-registers (or its uptime restarts). AuthRefused when the phone answers its login page; DeviceRefused for an
    error status or an unexpected challenge."""
    name = f"phone {phone.mac} ({phone.address})"
    try:
        resp, _ = _request("POST", phone, credentials, REBOOT_PATH, timeout)
    except MalformedAnswer as exc:       # an unexpected challenge refuses the reboot, as it always has
        raise DeviceRefused(exc.device, exc.message) from None
    body = _body(resp, name, f"POST {REBOOT_PATH}", timeout)
    refuse_error_status(name, f"POST {REBOOT_PATH}", resp, lambda: "admin credentials refused")
    if is_login_page(body):
        raise AuthRefused(name, f"POST {REBOOT_PATH}: the phone answered {resp.status_code} with its login page: the "
                                f"admin login was not taken and the phone was not rebooted")


def read_home(phone: Phone, credentials: Credentials, timeout: float = 5.0) -> bool:
    """GET the web UI's home page (read-only); whether the phone asked for a login at all (False: it answered
    without one, so the login was not checked). DriverError when it cannot be read or answers its login page."""
    name = f"phone {phone.mac} ({phone.address})"
    resp, logged_in = _request("GET", phone, credentials, HOME_PATH, timeout)
    body = _body(resp, name, f"GET {HOME_PATH}", timeout)
    refuse_error_status(name, f"GET {HOME_PATH}", resp, lambda: "admin credentials refused")
    if logged_in and is_login_page(body):
        raise AuthRefused(name, f"GET {HOME_PATH}: the phone answered its login page: the admin login was not taken")
    return logged_in
