"""What a virtual phone tells the outside world, in the formats of the real interfaces.

The formats marked uncertain in shared/reference/polycom.md are fixed here, in
one place, so that correcting one after a look at a real phone is a one-file
change:

* syslog line (our format, RFC 3164 framing; a lab may switch both lines off): ``<PRI>Mmm dd hh:mm:ss HOST polycom[MAC]: reg.X.server.Y ADDR registration succeeded expires=N``
  or ``... registration failed reason=TEXT``; calls: ``... call to NUMBER via server Y answered 200``.
* telephone notification events, phone state polling and the web UI's answers: rendered from the
  conformance corpus (soundpoint.conformance, areas ``notification``, ``polling``, ``web-ui``): an
  entry's body is parsed and only the fields that carry the phone's live values are replaced.
* REST (UC Software 5.4+): rendered from the conformance corpus (soundpoint/conformance/entries/rest), the
  entry chosen by the phone's firmware version, live values replaced in the parsed body (``rest_*`` below).
"""
from __future__ import annotations

import copy
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from functools import lru_cache

from soundpoint import conformance

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


@lru_cache(maxsize=None)
def _template(entry_id: str) -> ET.Element:
    """A corpus entry's XML body, parsed once; callers deep-copy it before filling it in."""
    return ET.fromstring(conformance.get(entry_id).body)


def _fill(element: ET.Element, values: dict[str, str]) -> None:
    """Replace the text of `element`'s children named in `values` (each must be in the entry's body)."""
    for tag, value in values.items():
        child = element.find(tag)
        if child is None:
            raise KeyError(f"the corpus body has no <{tag}> under <{element.tag}>")
        child.text = value


def _xml(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def line_event(kind: str, mac: str, ip: str, line: int) -> bytes:
    """kind: LineRegistrationEvent or LineUnregistrationEvent (corpus notification-line-(un)registration)."""
    entry = {"LineRegistrationEvent": "notification-line-registration",
             "LineUnregistrationEvent": "notification-line-unregistration"}[kind]
    root = copy.deepcopy(_template(entry))
    _fill(root.find(kind), {"PhoneIP": ip, "MACAddress": mac, "LineNumber": str(line), "TimeStamp": iso_now()})
    return _xml(root)


def polling_device(mac: str, model: str, firmware: str, lines: dict[int, str]) -> bytes:
    """The device handler's answer in requestor mode (corpus polling-device-requestor)."""
    root = copy.deepcopy(_template("polling-device-requestor"))
    dn = ",".join(f"Line{n}:{user}" for n, user in sorted(lines.items()))
    _fill(root.find("DeviceInformation"), {"MACAddress": mac, "PhoneDN": dn, "AppLoadID": firmware,
                                          "BootROMID": firmware, "ModelNumber": model, "TimeStamp": iso_now()})
    return _xml(root)


def polling_call_state(lines: dict[int, tuple[str, bool]]) -> bytes:
    """The call state handler's document (corpus polling-callstate-requestor-idle / -active): one CallLineInfo per
    line, an active line with its CallInfo block; the same document is POSTed in push mode."""
    root = ET.Element("PolycomIPPhone")
    for n, (user, active) in sorted(lines.items()):
        entry = "polling-callstate-requestor-active" if active else "polling-callstate-requestor-idle"
        line = copy.deepcopy(_template(entry).find("CallLineInfo"))
        _fill(line, {"LineKeyNum": str(n), "LineDirNum": user})
        call = line.find("CallInfo")
        if call is not None:
            _fill(call, {"CallingPartyName": user, "CallingPartyDirNum": user})
        root.append(line)
    return _xml(root)


def web_answer(entry_id: str) -> tuple[int, dict[str, str], str]:
    """A web UI answer (status, headers, body) exactly as its corpus entry gives it (challenge, reboot answer)."""
    entry = conformance.get(entry_id)
    return entry.status_code or 200, {str(k): str(v) for k, v in (entry.answer.get("headers") or {}).items()}, entry.body


def digest_challenge(entry_id: str, nonce: str) -> tuple[int, dict[str, str], str]:
    """A digest challenge (status, headers, body) as its corpus entry gives it (rest-auth-challenge-digest,
    polling-auth-digest-challenge), with only its nonce replaced: the entry's WWW-Authenticate is parsed, the nonce
    read from it and swapped for this one, the rest of the header kept as written."""
    from sipwire import digest

    status, headers, body = web_answer(entry_id)
    asked = headers["WWW-Authenticate"]
    written = digest.parse_challenge(asked)["nonce"]
    headers["WWW-Authenticate"] = asked.replace(f'nonce="{written}"', f'nonce="{nonce}"', 1)
    return status, headers, body


# ------------------------------------------------------------ REST (UC Software 5): rendered from the corpus
# Each answer is a conformance entry's body (soundpoint/conformance/entries/rest), parsed, with only the live
# fields replaced in the parsed structure; which entry depends on the phone's firmware version.
def rest_answer(entry_id: str) -> tuple[dict, int]:
    """An entry's answer as (parsed JSON body, HTTP status): a fresh copy to fill in."""
    from soundpoint import conformance

    entry = conformance.get(entry_id)
    return entry.json(), entry.status_code or 200


def _uptime_text(seconds: float) -> str:
    """`UpTimeSinceLastReboot` before 5.7, in the shape rdbahm/Posh-UCS documents ("2 days 12:44:11")."""
    s = int(seconds)
    days = s // 86400
    return f"{days} {'day' if days == 1 else 'days'} {s % 86400 // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def rest_device_info(version: str, mac: str, model: str, uptime: float) -> tuple[dict, int]:
    """device/info: FirmwareRelease and UpTimeSinceLastReboot text before 5.7, Firmware and UpTime objects from 5.7."""
    from soundpoint.conformance import version_in

    if version_in(version, ">=5.7"):
        doc, status = rest_answer("rest-device-info-5.7")
        s = int(uptime)
        doc["data"]["UpTime"] = {"Days": s // 86400, "Hours": s % 86400 // 3600, "Minutes": s % 3600 // 60,
                                 "Seconds": s % 60}
        doc["data"]["Firmware"] = {k: version for k in doc["data"]["Firmware"]}
    else:
        doc, status = rest_answer("rest-device-info-5.4")
        doc["data"]["FirmwareRelease"] = version
        doc["data"]["UpTimeSinceLastReboot"] = _uptime_text(uptime)
    doc["data"].update(MACAddress=mac, ModelNumber=model)
    return doc, status


def rest_call_status(version: str, v2: bool, calls: list[dict]) -> tuple[dict, int]:
    """callStatus: v2 a list (empty when idle); v1 one call, or Status 4007 when there is none (5.7: DurationSeconds).
    `calls`: each with RemotePartyNumber, LineId, CallState, DurationSeconds."""
    from soundpoint.conformance import version_in

    if v2:
        doc, status = rest_answer("rest-callstatus-v2-idle")
        template, _ = rest_answer("rest-callstatus-v2-in-call")
        doc["data"] = [{**template["data"][0], **{k: str(v) for k, v in c.items()}} for c in calls]
        return doc, status
    if not calls:
        return rest_answer("rest-callstatus-v1-idle")
    five_seven = version_in(version, "5.7")
    doc, status = rest_answer("rest-callstatus-v1-in-call-5.7" if five_seven else "rest-callstatus-v1-in-call")
    call = {k: str(v) for k, v in calls[0].items()}
    if not five_seven:
        call["DurationInSeconds"] = call.pop("DurationSeconds", "0")
    doc["data"].update(call)
    return doc, status


def rest_line_info(version: str, lines: list[dict]) -> tuple[dict, int]:
    """lineInfo: one object per line; SIPAddress before 5.7, Username from 5.7. `lines`: LineNumber,
    RegistrationStatus, ProxyAddress, address (user@host), UserID, Port."""
    from soundpoint.conformance import version_in

    five_seven = version_in(version, ">=5.7")
    doc, status = rest_answer("rest-lineinfo-5.7" if five_seven else "rest-lineinfo-5.4")
    template = doc["data"][0]
    out = []
    for line in lines:
        entry = {**template, **{k: str(v) for k, v in line.items() if k != "address"}, "Label": str(line["UserID"])}
        entry["Username" if five_seven else "SIPAddress"] = str(line["address"])
        out.append(entry)
    doc["data"] = out
    return doc, status


def rest_config_values(values: dict[str, str]) -> tuple[dict, int]:
    """config/get: each name to {Value, Source} (the Source of the corpus entry; its set of values is unknown)."""
    doc, status = rest_answer("rest-config-get")
    source = next(iter(doc["data"].values()))["Source"]
    doc["data"] = {name: {"Value": value, "Source": source} for name, value in values.items()}
    return doc, status


def rest_status(entry_id: str) -> tuple[dict, int]:
    """An answer that is only a Status (safeRestart, config/set, dial, errors, busy)."""
    return rest_answer(entry_id)
