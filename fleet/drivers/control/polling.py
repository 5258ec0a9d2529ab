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
from ..errors import DeviceTimeout, MalformedAnswer
from .rest import auth_hint, no_answer, phone_auth, refuse_error_status

CALL_STATE_PATH = "/polling/callStateHandler"
DEVICE_PATH = "/polling/deviceHandler"
DEVICE_FIELDS = ("MACAddress", "ModelNumber", "AppLoadID", "BootROMID")


def _get(phone: Phone, credentials: Credentials, timeout: float, digest_only: bool,
         path: str = CALL_STATE_PATH) -> requests.Response:
    name = f"phone {phone.mac} ({phone.address})"
    auth = HTTPDigestAuth(credentials.username, credentials.password) if digest_only else phone_auth(phone, credentials)
    try:
        resp = requests.get(f"http://{phone.address}:{phone.http_port}{path}", auth=auth, timeout=timeout)
    except requests.RequestException as exc:
        raise no_answer(name, f"GET {path}", exc, timeout) from None
    refuse_error_status(name, f"GET {path}", resp, lambda: auth_hint(phone, resp))
    return resp


def parse_device_information(body: bytes, name: str) -> dict[str, str]:
    """MACAddress, ModelNumber, AppLoadID, BootROMID of a PolycomIPPhone DeviceInformation document (those present);
    MalformedAnswer when it is not one or names no MAC address."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise MalformedAnswer(name, f"GET {DEVICE_PATH}: answer is not XML") from None
    info = root.find("DeviceInformation") if root.tag == "PolycomIPPhone" else None
    if info is None:
        raise MalformedAnswer(name, f"GET {DEVICE_PATH}: answer is not a PolycomIPPhone DeviceInformation document")
    out = {f: (info.findtext(f) or "").strip() for f in DEVICE_FIELDS}
    if not out["MACAddress"]:
        raise MalformedAnswer(name, f"GET {DEVICE_PATH}: DeviceInformation names no MACAddress")
    return {k: v for k, v in out.items() if v}


def device_information(phone: Phone, credentials: Credentials, timeout: float = 3.0,
                       pushed: bool = False) -> dict[str, str] | None:
    """The phone's DeviceInformation read by state polling (digest, the polling login): one GET, nothing changed.

    `pushed`: the phone is configured to POST its answers to apps.statePolling.URL, so an empty 200 is a login it
    accepted (None: nothing to read here). DriverError when the phone cannot be asked or its answer read.
    """
    resp = _get(phone, credentials, timeout, True, DEVICE_PATH)
    if pushed and not resp.content.strip():
        return None
    return parse_device_information(resp.content, f"phone {phone.mac} ({phone.address})")


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
