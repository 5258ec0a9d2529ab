"""What a virtual phone tells the outside world, in the formats of the real interfaces.

The formats marked uncertain in shared/reference/polycom.md are fixed here, in
one place, so that correcting one after a look at a real phone is a one-file
change:

* syslog line (our format, RFC 3164 framing; a lab may switch both lines off): ``<PRI>Mmm dd hh:mm:ss HOST polycom[MAC]: reg.X.server.Y ADDR registration succeeded expires=N``
  or ``... registration failed reason=TEXT``; calls: ``... call to NUMBER via server Y answered 200``.
* telephone notification events: XML ``PolycomIPPhone/LineRegistrationEvent`` (confirmed shape).
* phone state polling: ``GET /polling/deviceHandler`` and ``/polling/callStateHandler`` (paths uncertain).
* REST (UC Software 5+): JSON ``{"Status": "2000", "data": ...}`` (confirmed).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from xml.sax.saxutils import escape

FACILITY_LOCAL0_INFO = 134
FACILITY_LOCAL0_WARNING = 132


def sends_registration_line(phone: object) -> bool:
    """Whether this phone sends the per-server registration line at all. Polycom documents no such line and a
    SIP 3.x phone takes its syslog settings from the bootROM, so a lab can switch it off (lab file
    `syslog_registration_line: false`, set on each phone as `syslog_registration_line`): then the controller
    must learn each server's state from the wire, the gateway's registrar and the line-level sources."""
    return bool(getattr(phone, "syslog_registration_line", True))


def sends_call_line(phone: object) -> bool:
    """Whether this phone sends our call line. It is as invented as the registration line, so the same switch
    turns it off: then the controller learns which server took a call from the wire (the answered INVITE) only."""
    return bool(getattr(phone, "syslog_call_line", sends_registration_line(phone)))


def syslog_registration(mac: str, host: str, reg: int, server: int, address: str, ok: bool,
                        expires: int | None = None, reason: str = "") -> bytes:
    pri = FACILITY_LOCAL0_INFO if ok else FACILITY_LOCAL0_WARNING
    outcome = f"registration succeeded expires={expires}" if ok else f"registration failed reason={reason or 'unknown'}"
    return _syslog(pri, host, mac, f"reg.{reg}.server.{server} {address} {outcome}")


def syslog_call(mac: str, host: str, number: str, server: int, address: str, status: int) -> bytes:
    return _syslog(FACILITY_LOCAL0_INFO, host, mac, f"call to {number} via server {server} {address} answered {status}")


def _syslog(pri: int, host: str, mac: str, text: str) -> bytes:
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
    return f"<{pri}>{stamp} {host} polycom[{mac}]: {text}".encode()


def iso_now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


def line_event(kind: str, mac: str, ip: str, line: int) -> bytes:
    """kind: LineRegistrationEvent or LineUnregistrationEvent."""
    return (f'<?xml version="1.0"?>\n<PolycomIPPhone><{kind}>'
            f"<PhoneIP>{escape(ip)}</PhoneIP><MACAddress>{escape(mac)}</MACAddress>"
            f"<LineNumber>{line}</LineNumber><TimeStamp>{iso_now()}</TimeStamp>"
            f"</{kind}></PolycomIPPhone>").encode()


def polling_device(mac: str, model: str, firmware: str, lines: dict[int, str]) -> bytes:
    dn = ",".join(f"Line{n}:{user}" for n, user in sorted(lines.items()))
    return (f'<?xml version="1.0"?>\n<PolycomIPPhone><DeviceInformation>'
            f"<MACAddress>{escape(mac)}</MACAddress><PhoneDN>{escape(dn)}</PhoneDN>"
            f"<AppLoadID>{escape(firmware)}</AppLoadID><BootROMID>{escape(firmware)}</BootROMID>"
            f"<ModelNumber>{escape(model)}</ModelNumber><TimeStamp>{iso_now()}</TimeStamp>"
            f"</DeviceInformation></PolycomIPPhone>").encode()


def polling_call_state(lines: dict[int, tuple[str, bool]]) -> bytes:
    parts = []
    for n, (user, active) in sorted(lines.items()):
        parts.append(f"<CallLineInfo><LineKeyNum>{n}</LineKeyNum><LineDirNum>{escape(user)}</LineDirNum>"
                     f"<LineState>{'Active' if active else 'Inactive'}</LineState></CallLineInfo>")
    return ('<?xml version="1.0"?>\n<PolycomIPPhone>' + "".join(parts) + "</PolycomIPPhone>").encode()


def rest_ok(data) -> dict:
    return {"Status": "2000", "data": data}


def uptime_text(seconds: float) -> str:
    """`UpTimeSinceLastReboot` as UC Software 5.5 writes it: "20 Days 16:11:42"."""
    s = int(seconds)
    return f"{s // 86400} Days {s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def rest_error(code: str = "4000") -> dict:
    return {"Status": code}
