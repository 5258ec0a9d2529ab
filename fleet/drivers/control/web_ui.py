"""The web configuration utility: its reboot, POST /form-submit/Reboot (UC Software 4.x; polycom.md "More facts"),
and a read of its home page (a reachability check for phones that have nothing else to ask, SIP 2.x).

The web UI uses HTTP Basic with the realm "SPIP Configuration" (confirmed default). Basic sends the
admin password in clear, so it is sent only after the phone itself asked for Basic with that realm;
a phone that asks for digest gets digest.
"""
from __future__ import annotations

import requests
from requests.auth import HTTPBasicAuth, HTTPDigestAuth

from ...inventory import Credentials, Phone
from ..errors import DeviceRefused, MalformedAnswer
from .rest import no_answer, refuse_error_status

REBOOT_PATH = "/form-submit/Reboot"
HOME_PATH = "/"
REALM = "SPIP Configuration"


def _request(method: str, phone: Phone, credentials: Credentials, path: str, timeout: float) -> tuple[requests.Response, bool]:
    """One request to the web UI, first without a login, then answering the phone's own challenge; the answer and
    whether a login was sent."""
    name = f"phone {phone.mac} ({phone.address})"
    url = f"http://{phone.address}:{phone.http_port}{path}"
    try:
        first = requests.request(method, url, timeout=timeout)
        if first.status_code != 401:
            return first, False
        asked = first.headers.get("WWW-Authenticate", "")
        scheme = asked.split(" ", 1)[0].lower()
        if scheme == "basic" and f'realm="{REALM}"' in asked:
            auth = HTTPBasicAuth(credentials.username, credentials.password)
        elif scheme == "digest":
            auth = HTTPDigestAuth(credentials.username, credentials.password)
        else:
            raise MalformedAnswer(name, f"{method} {path}: the phone asks for {asked[:60]!r}, not the web UI's "
                                        f"Basic realm {REALM!r} or digest; nothing sent")
        return requests.request(method, url, auth=auth, timeout=timeout), True
    except requests.RequestException as exc:
        raise no_answer(name, f"{method} {path}", exc, timeout) from None


def reboot(phone: Phone, credentials: Credentials, timeout: float = 5.0) -> None:
    name = f"phone {phone.mac} ({phone.address})"
    try:
        resp, _ = _request("POST", phone, credentials, REBOOT_PATH, timeout)
    except MalformedAnswer as exc:       # an unexpected challenge refuses the reboot, as it always has
        raise DeviceRefused(exc.device, exc.message) from None
    refuse_error_status(name, f"POST {REBOOT_PATH}", resp, lambda: "admin credentials refused")


def read_home(phone: Phone, credentials: Credentials, timeout: float = 5.0) -> bool:
    """GET the web UI's home page with the admin login (read-only); whether the phone asked for a login at all
    (False: it answered without one, so the login was not checked). DriverError when it cannot be read."""
    name = f"phone {phone.mac} ({phone.address})"
    resp, logged_in = _request("GET", phone, credentials, HOME_PATH, timeout)
    refuse_error_status(name, f"GET {HOME_PATH}", resp, lambda: "admin credentials refused")
    return logged_in
