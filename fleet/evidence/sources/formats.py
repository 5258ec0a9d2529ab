"""Parsers for what phones push: syslog registration lines and telephone notification events.

The syslog registration line is OUR format, not Polycom's: Polycom documents
no such line, SIP 3.x phones take their syslog settings from the bootROM, and
real sites may never send it. It is for sites whose phones (or a log relay in
front of them) were made to send it; it is defined here and only
here: ``polycom[MAC]: reg.X.server.Y ADDR registration succeeded|failed ...``
and ``polycom[MAC]: call to N via server Y ADDR answered STATUS``. Nothing in
fleet needs it for registration state: per-server state comes from the SIP on
the wire, HEP and the gateway's bindings (this package's other sources), line state from
the telephone notification events below, which Polycom does document. Anything
else is ignored, and nothing here raises on garbage.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from fleet.state.observe import REGISTERED, UNREGISTERED, Observation

_REG = re.compile(r"polycom\[(?P<mac>[0-9A-Fa-f]{12})\]: reg\.(?P<x>\d{1,2})\.server\.(?P<y>\d)\s+(?P<addr>\S+)\s+"
                  r"registration (?P<ok>succeeded|failed)(?:\s+(?P<detail>.{0,200}))?")
_CALL = re.compile(r"polycom\[(?P<mac>[0-9A-Fa-f]{12})\]: call to (?P<num>\S{1,64}) via server (?P<y>\d)\s+(?P<addr>\S+)\s+answered (?P<status>\d{3})")


def parse_syslog(data: bytes, t: float) -> Observation | None:
    try:
        text = data[:2048].decode("utf-8", errors="replace")
    except Exception:
        return None
    m = _REG.search(text)
    if m:
        return Observation(mac=m["mac"].lower(), t=t, source="syslog", reg=int(m["x"]), server=int(m["y"]),
                           state=REGISTERED if m["ok"] == "succeeded" else UNREGISTERED, address=m["addr"],
                           detail=(m["detail"] or "").strip())
    m = _CALL.search(text)
    if m:
        return Observation(mac=m["mac"].lower(), t=t, source="syslog", server=int(m["y"]), address=m["addr"],
                           detail=f"call to {m['num']} answered {m['status']}", kind="call")
    return None


def parse_line_event(body: bytes, t: float) -> Observation | None:
    """LineRegistrationEvent / LineUnregistrationEvent (corpus area `notification`: PhoneIP, MACAddress, LineNumber,
    TimeStamp; with or without the PolycomIPPhone root); None for any other event or a malformed one."""
    if len(body) > 65536 or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for kind, state in (("LineRegistrationEvent", REGISTERED), ("LineUnregistrationEvent", UNREGISTERED)):
        # under the PolycomIPPhone root (SIP 3.1 guide's example), or bare as the UC 5.0 guide's table prints it
        ev = root if root.tag == kind else root.find(f".//{kind}")
        if ev is None:
            continue
        mac = (ev.findtext("MACAddress") or "").strip().lower().replace(":", "")
        line = (ev.findtext("LineNumber") or "1").strip()
        if not re.fullmatch(r"[0-9a-f]{12}", mac) or not line.isdigit():
            return None
        return Observation(mac=mac, t=t, source="event", reg=int(line), server=None, state=state,
                           detail=kind)
    return None
