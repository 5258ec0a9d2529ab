"""Phone state polling over HTTP for one phone, synchronous: is a line in a call (before a rollout reboots it).

The asynchronous poller (drivers.collect.poller) serves the collectors; this is
the one request a rollout task makes. State polling has its own login
(`apps.statePolling.username/password`) and uses digest (SIP 3.1 developer's
guide p. 2-32). Where the answer goes depends on the phone's response mode
(corpus area `polling`):

* requestor mode, `apps.statePolling.responseMode=0` (Posh-UCS, sipphone-automation):
  the state comes back in the answer to the GET;
* push mode, `apps.statePolling.URL` set and the mode not 0: the phone POSTs its
  state to that URL (a collector), so the state is read from what was pushed;
* neither: the phone sends its state nowhere (SIP 3.1 guide: "If this URL is set
  to Null, the requested information will not be sent").

Anything but a readable answer raises DriverError: the caller counts it as
"unknown", with the reason.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Literal, Mapping

import redis
import requests

from soundpoint.deadline import poll_until

from fleet.config.inventory import Credentials, Phone
from fleet.drivers.control.call_check import CallCheck
from fleet.drivers.errors import DeviceTimeout, MalformedAnswer
from fleet.drivers.lan_http import lan_request
from fleet.drivers.control.rest import (BoundedDigestAuth, auth_hint, no_answer, phone_auth, read_answer, refuse_error_status,
                   request_budget)

# the spelling public clients that talk to real phones request (Posh-UCS, sipphone-automation); whether the phone
# matches it case-sensitively is printed nowhere (corpus polling-callstate-path-camelcase)
CALL_STATE_PATH = "/polling/callstateHandler"
DEVICE_PATH = "/polling/deviceHandler"
DEVICE_FIELDS = ("MACAddress", "ModelNumber", "AppLoadID", "BootROMID")
MAX_ANSWER = 65536

# LineState values the sources allow: Active/Inactive (SIP 3.1 p. 2-28, UC 5.0 Table 29), Connected (SIP 3.1
# p. 2-29's example). Anything else is not guessed at: the check says "unknown" and names the value.
IN_CALL_LINE_STATES = frozenset({"Active", "Connected"})
IDLE_LINE_STATES = frozenset({"Inactive"})

ResponseMode = Literal["requestor", "push", "none"]


def response_mode(params: Mapping[str, str]) -> ResponseMode:
    """Where the phone's state goes, from its effective parameters: `requestor` (in the HTTP answer; responseMode 0),
    `push` (POSTed to apps.statePolling.URL), or `none` (neither: the phone sends it nowhere)."""
    mode = str(params.get("apps.statePolling.responseMode", "") or "").strip()
    if mode == "0":
        return "requestor"
    if str(params.get("apps.statePolling.URL", "") or "").strip():
        return "push"
    return "none"


NOT_SENT = ("neither requestor mode (apps.statePolling.responseMode=0) nor a push URL (apps.statePolling.URL) is "
            "set: the phone sends its state nowhere (SIP 3.1 developer's guide p. 2-32)")


def mode_problems(params: Mapping[str, str], collector_events: str) -> list[str]:
    """What keeps a rollout's call checks from reading this phone's state polling, for the plan's warnings:
    neither mode set, or a push URL that is not the site collector's /state (where call checks read pushes)."""
    mode = response_mode(params)
    if mode == "none":
        return [f"state polling: {NOT_SENT}; every call check will say unknown and defer the phone (set "
                f"apps.statePolling.responseMode=0, or apps.statePolling.URL to the collector's "
                f"http://{collector_events}/state)"]
    url = str(params.get("apps.statePolling.URL", "") or "").strip()
    host = collector_events.rpartition(":")[0]
    if mode == "push" and host not in ("", "0.0.0.0", "::", "[::]") and url.rstrip("/") != f"http://{collector_events}/state":
        return [f"state polling pushes to {url[:80]!r}, not to this site's collector (http://{collector_events}/state): "
                f"call checks cannot read what the phone pushes"]
    return []


def _get(phone: Phone, credentials: Credentials, timeout: float, digest_only: bool,
         path: str = CALL_STATE_PATH) -> bytes:
    """The body of one GET (at most MAX_ANSWER + 1 bytes, read as it streams in: `_xml` refuses a longer one);
    DriverError for no answer, an error status, or an answer that breaks off or drips past the request's budget."""
    name = f"phone {phone.mac} ({phone.address})"
    auth = BoundedDigestAuth(credentials.username, credentials.password) if digest_only else phone_auth(phone, credentials)
    deadline = time.monotonic() + request_budget(timeout)
    try:
        resp = lan_request("GET", f"http://{phone.address}:{phone.http_port}{path}", auth=auth, timeout=timeout,
                           stream=True)
    except requests.RequestException as exc:
        raise no_answer(name, f"GET {path}", exc, timeout) from None
    body = read_answer(resp, MAX_ANSWER, name, f"GET {path}", deadline)
    refuse_error_status(name, f"GET {path}", resp, lambda: auth_hint(phone, resp))
    return body


def _xml(body: bytes, name: str, what: str) -> ET.Element:
    """A phone's XML answer, bounded and without document type declarations (entity expansion)."""
    if len(body) > MAX_ANSWER:
        raise MalformedAnswer(name, f"{what}: answer longer than {MAX_ANSWER} bytes")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise MalformedAnswer(name, f"{what}: answer declares a document type")
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise MalformedAnswer(name, f"{what}: answer is not XML") from None


def parse_device_information(body: bytes, name: str) -> dict[str, str]:
    """MACAddress, ModelNumber, AppLoadID, BootROMID of a PolycomIPPhone DeviceInformation document (those present);
    MalformedAnswer when it is not one or names no MAC address."""
    root = _xml(body, name, f"GET {DEVICE_PATH}")
    info = root if root.tag == "DeviceInformation" else root.find("DeviceInformation") if root.tag == "PolycomIPPhone" else None
    if info is None:
        raise MalformedAnswer(name, f"GET {DEVICE_PATH}: answer is not a PolycomIPPhone DeviceInformation document")
    out = {f: (info.findtext(f) or "").strip() for f in DEVICE_FIELDS}
    if not out["MACAddress"]:
        raise MalformedAnswer(name, f"GET {DEVICE_PATH}: DeviceInformation names no MACAddress")
    return {k: v for k, v in out.items() if v}


def _shown(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value[:40])


def parse_call_state(body: bytes, name: str) -> bool:
    """Whether a line is in a call in a CallLineInfo document (under PolycomIPPhone, or bare as the UC 5.0 guide's
    table prints it). A line is in a call when its LineState is Active or Connected or it carries a CallInfo block
    (the guides: CallInfo is included only for an active line); idle when every line is Inactive without one.
    MalformedAnswer naming the value for a LineState no source allows, or a document with no line."""
    root = _xml(body, name, "call state")
    if root.tag not in ("PolycomIPPhone", "CallLineInfo"):
        raise MalformedAnswer(name, f"call state: root element {_shown(root.tag)!r} is not PolycomIPPhone")
    lines = [root] if root.tag == "CallLineInfo" else root.findall("CallLineInfo")
    if not lines:
        raise MalformedAnswer(name, "call state names no line (no CallLineInfo)")
    in_call = False
    for line in lines:
        state = (line.findtext("LineState") or "").strip()
        if state in IN_CALL_LINE_STATES or line.find("CallInfo") is not None:
            in_call = True
        elif state not in IDLE_LINE_STATES:
            raise MalformedAnswer(name, f"call state: LineState {_shown(state)!r} of line "
                                        f"{_shown((line.findtext('LineKeyNum') or '?').strip())} is none the sources "
                                        f"allow (Active, Connected, Inactive)")
    return in_call


def device_information(phone: Phone, credentials: Credentials, timeout: float = 3.0,
                       pushed: bool = False) -> dict[str, str] | None:
    """The phone's DeviceInformation read by state polling (digest, the polling login): one GET, nothing changed.

    `pushed`: the phone does not answer in the response (push mode or no mode), so an empty 200 is a login it
    accepted (None: nothing to read here). DriverError when the phone cannot be asked or its answer read.
    """
    body = _get(phone, credentials, timeout, True, DEVICE_PATH)
    if pushed and not body.strip():
        return None
    return parse_device_information(body, f"phone {phone.mac} ({phone.address})")


def polling_in_call(phone: Phone, credentials: Credentials, timeout: float = 3.0, digest_only: bool = False) -> bool:
    """Requestor mode: whether a line of the phone is in a call; DriverError when the phone cannot be asked or its
    answer read (an empty answer says the phone is not in requestor mode)."""
    body = _get(phone, credentials, timeout, digest_only)
    name = f"phone {phone.mac} ({phone.address})"
    if not body.strip():
        raise MalformedAnswer(name, f"GET {CALL_STATE_PATH}: empty answer (the phone answers in the response only "
                                    f"in requestor mode, apps.statePolling.responseMode=0)")
    return parse_call_state(body, name)


def pushed_call_state(phone: Phone, credentials: Credentials, store, timeout: float = 3.0, wait: float = 3.0):
    """Push mode: ask the phone, then take the first state it POSTs to the collector after the asking began.

    "After" is told by the store's push counter for the phone (Store.record_pushed_call_state), read before the
    request: a push counted later is newer, whatever the collector's and this worker's clocks say (they run on
    different hosts; comparing the collector's timestamp with our own clock would take a stale push for a fresh one
    when the collector's clock is ahead, and wait out a fresh one when it is behind).
    Returns a CallCheck; DeviceTimeout when no new push arrives within `wait` seconds or the store is away.
    """
    name = f"phone {phone.mac} ({phone.address})"
    if store is None:
        raise DeviceTimeout(name, "state is pushed to apps.statePolling.URL, and no store to read it from")
    def pushed_now():
        try:
            return store.pushed_call_state(phone.mac)
        except redis.RedisError as exc:
            raise DeviceTimeout(name, f"the store holding pushed states is unavailable ({type(exc).__name__})") from None

    before = pushed_now()
    seen = before.seq if before is not None else 0
    body = _get(phone, credentials, timeout, True)
    if body.strip():
        # a phone whose response mode is not what the inventory says answers in the response after all: its answer
        # is the state (read as requestor mode reads it), not something to wait past
        active = parse_call_state(body, name)
        return CallCheck("in-call" if active else "idle", "answered in the response, not pushed")

    def newer():
        pushed = pushed_now()
        return pushed if pushed is not None and pushed.seq > seen else None

    pushed = poll_until(newer, wait, 0.1)
    if not pushed:
        raise DeviceTimeout(name, f"no state pushed to apps.statePolling.URL within {wait:g}s")
    return CallCheck("in-call" if pushed.in_call else "idle", "pushed state")
