"""Phone state polling over HTTP for one phone, synchronous: is a line in a call (before a rollout reboots it).

The asynchronous poller (drivers.collect.poller) serves the collectors; this is
the one request a rollout task makes. State polling has its own login
(`apps.statePolling.username/password`) and uses digest; with
`apps.statePolling.URL` set the phone does not answer with its state but POSTs it
to that URL (a collector), so the state is then read from what was pushed.
Anything but a readable answer raises DriverError: the caller counts it as
"possibly in a call".
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import requests
from requests.auth import HTTPDigestAuth

from ...inventory import Credentials, Phone
from ..errors import DeviceRefused, DeviceTimeout, MalformedAnswer
from .rest import auth_hint, phone_auth

CALL_STATE_PATH = "/polling/callStateHandler"


def _get(phone: Phone, credentials: Credentials, timeout: float, digest_only: bool) -> requests.Response:
    name = f"phone {phone.mac} ({phone.address})"
    auth = HTTPDigestAuth(credentials.username, credentials.password) if digest_only else phone_auth(phone, credentials)
    try:
        resp = requests.get(f"http://{phone.address}:{phone.http_port}{CALL_STATE_PATH}", auth=auth, timeout=timeout)
    except requests.RequestException as exc:
        raise DeviceTimeout(name, f"GET {CALL_STATE_PATH}: {type(exc).__name__}") from None
    if resp.status_code == 401:
        raise DeviceRefused(name, f"GET {CALL_STATE_PATH}: HTTP 401 ({auth_hint(phone, resp)})")
    if not resp.ok:
        raise DeviceRefused(name, f"GET {CALL_STATE_PATH}: HTTP {resp.status_code}")
    return resp


def parse_call_state(body: bytes, name: str) -> bool:
    """Whether a line is Active in a PolycomIPPhone CallLineInfo document; MalformedAnswer if it says nothing."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise MalformedAnswer(name, "call state is not XML") from None
    states = [c.findtext("LineState") for c in root.iter("CallLineInfo")]
    if root.tag != "PolycomIPPhone" or not states or any(s not in ("Active", "Inactive") for s in states):
        raise MalformedAnswer(name, "call state names no line with a LineState")
    return "Active" in states


def polling_in_call(phone: Phone, credentials: Credentials, timeout: float = 3.0, digest_only: bool = False) -> bool:
    """Whether a line of the phone is Active; DriverError when the phone cannot be asked or its answer read."""
    resp = _get(phone, credentials, timeout, digest_only)
    return parse_call_state(resp.content, f"phone {phone.mac} ({phone.address})")


def pushed_call_state(phone: Phone, credentials: Credentials, store, timeout: float = 3.0, wait: float = 3.0):
    """Push mode: ask the phone, then take the state it POSTed to the collector after the request.

    Returns a CallCheck; DeviceTimeout when nothing newer than the request arrives within `wait` seconds.
    """
    from ...phones import CallCheck

    name = f"phone {phone.mac} ({phone.address})"
    if store is None:
        raise DeviceTimeout(name, "state is pushed to apps.statePolling.URL, and no store to read it from")
    from ...deadline import poll_until

    asked = time.time()
    _get(phone, credentials, timeout, True)

    def newer():
        pushed = store.pushed_call_state(phone.mac)
        return pushed if pushed is not None and pushed[1] >= asked else None

    pushed = poll_until(newer, wait, 0.1)
    if not pushed:
        raise DeviceTimeout(name, f"no state pushed to apps.statePolling.URL within {wait:g}s")
    return CallCheck("in-call" if pushed[0] else "idle", "pushed state")
