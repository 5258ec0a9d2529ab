"""The gateway's own registrar: who is bound to it and until when, per gateway platform, as data.

An on-site gateway knows exactly which phones hold a binding with it, so its
registrar is the second per-server source beside the wire. Each platform is a
shell command (run on the gateway through the router/gateway driver's SSH) and
a parser of its text output:
- Kamailio: `kamcmd ul.dump` (usrloc's tree: AoR, then per contact Address,
  Expires in seconds remaining, or "permanent", "expired", "deleted");
- Asterisk: `pjsip show contacts` (AoR/URI, hash, status, RTT; no expiry),
  with the registrar's AstDB records (`database show registrar/contact`,
  JSON with the absolute expiration_time) for the expiry;
- FreeSWITCH: `show registrations` (CSV: reg_user, realm, token, url, expires
  as an absolute time, network_ip, network_port, network_proto, hostname).
Absolute times are judged against the gateway's own clock: each command first
prints `@now <epoch seconds>` from the gateway, so clock skew between gateway
and controller does not shorten or stretch a binding.

Parsers accept junk (banners, warnings, cut output) and skip what they do not
recognise; a line they cannot read never invents a binding.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ...observe import REGISTERED, UNREGISTERED, Observation
from sipwire import message as sip
from .wire_observations import SenderCheck, WireTarget, count_foreign

_NOW = re.compile(r"^@now\s+(\d{9,11})\s*$", re.M)


class GatewayOutputError(ValueError):
    """The command's output is not a complete answer of the platform (an error, a cut stream, another
    program's text): no observation may be made from it, since a missing phone would read as unbound."""


@dataclass(frozen=True, slots=True)
class Binding:
    aor: str                      # as the registrar names it: "1001" or "1001@example.com"
    contact: str                  # the bound contact URI
    expires_in: int | None        # seconds left; None = the platform does not say (or permanent)
    status: str = ""              # platform's word for the contact (Avail, CS_NEW, ...)
    source_ip: str = ""           # where the REGISTER came from, where the platform shows it
    user_agent: str = ""

    @property
    def user(self) -> str:
        return self.aor.split("@", 1)[0].removeprefix("sip:").removeprefix("sips:")

    @property
    def contact_host(self) -> str:
        try:
            return sip.uri_host_port(self.contact)[0]
        except sip.SipParseError:
            return ""

    @property
    def active(self) -> bool:
        return (self.expires_in is None or self.expires_in > 0) and self.status.lower() not in (
            "removed", "deleted", "expired")


def gateway_now(text: str) -> float | None:
    """The gateway's clock, from the `@now` line our commands print first."""
    m = _NOW.search(text)
    return float(m.group(1)) if m else None


# --- Kamailio ----------------------------------------------------------------------------------------------

_KV = re.compile(r"^\s*([A-Za-z][A-Za-z-]*):\s*(.*?)\s*$")


def parse_kamailio(text: str, now: float | None = None) -> list[Binding]:
    """`kamcmd ul.dump` (the full form; the `brief` form lists AoRs only and yields no binding)."""
    if re.search(r"reply too big", text, re.I):
        raise GatewayOutputError(
            "Kamailio refused the ul.dump answer as too big for its control socket (kamcmd: 'reply too big'): raise "
            "the ctl module's binrpc_max_body_size (and binrpc_struct_max_body_size), e.g. "
            'modparam("ctl", "binrpc_max_body_size", 1024) in kamailio.cfg (KiB; kamailio issue #1127)')
    if not re.search(r"^\s*Domain:\s*\S", text, re.M) or not re.search(r"^\s*AoRs:\s*\{", text, re.M):
        raise GatewayOutputError("not a Kamailio ul.dump answer (no Domain and AoRs sections)")
    opened = sum(1 for line in text.splitlines() if line.rstrip().endswith("{"))
    closed = sum(1 for line in text.splitlines() if line.strip() == "}")
    if opened != closed:
        raise GatewayOutputError(f"Kamailio ul.dump answer is cut ({opened} blocks opened, {closed} closed)")
    if re.search(r"^\s*AoR:\s*\S", text, re.M) and not re.search(r"^\s*Address:\s*\S", text, re.M):
        raise GatewayOutputError("Kamailio ul.dump answer lists AoRs without contacts (the 'brief' form?); "
                                 "run `kamcmd ul.dump` without 'brief'")
    out: list[Binding] = []
    aor = ""
    cur: dict[str, str] | None = None

    def flush() -> None:
        nonlocal cur
        if cur is not None and aor and cur.get("Address", "").lower().startswith(("sip:", "sips:")):
            raw = cur.get("Expires", "")
            if raw.lstrip("-").isdigit():
                expires: int | None = max(0, int(raw))
                status = cur.get("State", "")
            elif raw.lower() == "permanent":
                expires, status = None, cur.get("State", "")
            elif raw.lower() in ("expired", "deleted"):
                expires, status = 0, raw.lower()
            else:
                expires, status = None, ""
                if raw:
                    cur = None
                    return            # an Expires we cannot read: no binding rather than a guess
            received = cur.get("Received", "")
            src = ""
            if received.lower().startswith("sip:"):
                try:
                    src = sip.uri_host_port(received)[0]
                except sip.SipParseError:
                    src = ""
            out.append(Binding(aor=aor, contact=cur["Address"], expires_in=expires, status=status,
                               source_ip=src, user_agent=cur.get("User-Agent", "")))
        cur = None

    for line in text.splitlines():
        m = _KV.match(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2)
        if key == "AoR":
            flush()
            aor = value if value and value != "{" else ""
        elif key == "Contact" and value == "{":
            flush()
            cur = {}
        elif key == "Info" and value == "{":
            flush()
            aor = ""
        elif cur is not None and value != "{" and key not in cur:
            cur[key] = value
    flush()
    return out


# --- Asterisk ----------------------------------------------------------------------------------------------

_PJSIP_CONTACT = re.compile(r"^\s*Contact:\s+(?P<aor>[^/\s<]+)/(?P<uri>sips?:\S+)\s+(?P<hash>[0-9a-fA-F]{6,})\s+"
                            r"(?P<status>[A-Za-z_]+)\s+(?P<rtt>[0-9.]+|nan|-)?\s*$")
_ASTDB = re.compile(r"^/registrar/contact/(?P<id>[^:]+?)\s*:\s*(?P<json>\{.*\})\s*$")


def parse_asterisk(text: str, now: float | None = None) -> list[Binding]:
    """`pjsip show contacts` rows, with expiry from `database show registrar/contact` rows where present.

    The two are joined on the contact's id: AstDB keys are `AOR;@HASH`, and the CLI row prints the first ten
    characters of that HASH (res_pjsip's `%-10.10s`). Not on the URI: the CLI cuts a long URI to its column
    (`%-*.*s`), so a phone with a long Contact would never match; the AstDB record's full URI is the contact."""
    if not re.search(r"^\s*(No objects found\.|Objects found: \d+)", text, re.M):
        raise GatewayOutputError("not a complete `pjsip show contacts` answer (no 'Objects found' line)")
    now = gateway_now(text) or now
    expiry: dict[tuple[str, str], tuple[str, int | None, str, str]] = {}    # (aor, hash[:10]) -> uri, left, via, ua
    rows: list[tuple[str, Binding]] = []
    for line in text.splitlines():
        m = _ASTDB.match(line)
        if m:
            try:
                rec = json.loads(m.group("json"))
                uri = str(rec["uri"])
                aor, _, digest = m.group("id").partition(";@")
                aor = aor.split("@@", 1)[0]
                exp_at = int(rec.get("expiration_time", "0"))
            except (ValueError, KeyError, TypeError):
                continue
            left = None if exp_at == 0 or now is None else max(0, int(exp_at - now))
            expiry[(aor, (digest or uri)[:10])] = (uri, left, str(rec.get("via_addr", "")), str(rec.get("user_agent", "")))
            continue
        m = _PJSIP_CONTACT.match(line)
        if m:
            rows.append((m["hash"][:10], Binding(aor=m["aor"], contact=m["uri"], expires_in=None, status=m["status"])))
    out: list[Binding] = []
    seen: set[tuple[str, str]] = set()
    for digest, b in rows:
        uri, left, via, ua = expiry.get((b.aor, digest), (b.contact, None, "", ""))
        out.append(Binding(b.aor, uri, left, b.status, via, ua))
        seen.add((b.aor, digest))
    for key, (uri, left, via, ua) in expiry.items():
        if key not in seen:
            out.append(Binding(key[0], uri, left, "", via, ua))
    return out


# --- FreeSWITCH --------------------------------------------------------------------------------------------

def parse_freeswitch(text: str, now: float | None = None) -> list[Binding]:
    """`show registrations` (CSV with a header row; `expires` is an absolute time on the gateway's clock)."""
    if not re.search(r"^\s*\d+ total\.\s*$", text, re.M):
        raise GatewayOutputError("not a complete FreeSWITCH `show registrations` answer (no 'N total.' line)")
    now = gateway_now(text) or now
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("reg_user,"))
    except StopIteration:
        return []
    header = [h.strip() for h in lines[start].split(",")]
    if not {"reg_user", "url", "expires"} <= set(header):
        raise GatewayOutputError("FreeSWITCH registrations header lacks reg_user, url or expires")
    out: list[Binding] = []
    for row in csv.reader(lines[start + 1:]):
        if not row or (len(row) == 1 and (not row[0].strip() or row[0].strip().endswith("total."))):
            continue
        if len(row) > len(header) and "url" in header:        # a comma inside the url: rejoin it
            i = header.index("url")
            extra = len(row) - len(header)
            row = row[:i] + [",".join(row[i:i + extra + 1])] + row[i + extra + 1:]
        if len(row) != len(header):
            continue
        rec = dict(zip(header, (c.strip() for c in row)))
        url = rec.get("url", "")
        at = re.search(r"sips?:", url)       # not url.find("sip"): a profile may be named sip-lan (sofia/sip-lan/...)
        uri = url[at.start():] if at else ""
        exp = rec.get("expires", "")
        if not uri or not rec.get("reg_user") or not exp.isdigit():
            continue
        left = None if now is None else max(0, int(int(exp) - now))
        aor = rec["reg_user"] + ("@" + rec["realm"] if rec.get("realm") else "")
        out.append(Binding(aor=aor, contact=uri, expires_in=left, status="", source_ip=rec.get("network_ip", ""),
                           user_agent=""))
    return out


@dataclass(frozen=True)
class GatewayPlatform:
    """A gateway registrar: the shell command that lists its bindings (run on the gateway) and its parser."""
    name: str
    command: str
    parse: Callable[[str, float | None], list[Binding]]


_NOW_CMD = 'echo "@now $(date +%s)"; '

PLATFORMS: dict[str, GatewayPlatform] = {
    # 2>&1: kamcmd reports a fault ("reply too big", "500 - ...") on stderr, which the router's SSH run drops
    "kamailio": GatewayPlatform("kamailio", "kamcmd ul.dump 2>&1", parse_kamailio),
    "asterisk": GatewayPlatform("asterisk", _NOW_CMD + "asterisk -rx 'database show registrar/contact'; "
                                "asterisk -rx 'pjsip show contacts'", parse_asterisk),
    "freeswitch": GatewayPlatform("freeswitch", _NOW_CMD + "fs_cli -x 'show registrations'", parse_freeswitch),
}


def platform(name: str) -> GatewayPlatform:
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown gateway platform {name!r}; known: {', '.join(sorted(PLATFORMS))}") from None


def observations(bindings: Iterable[Binding], targets: Iterable[WireTarget], t: float,
                 source: str = "gateway", foreign: Counter | None = None) -> list[Observation]:
    """One observation per target (the gateway's server entry of each phone): registered with the binding's
    expiry when the registrar holds an active binding for the target's user, unregistered when it holds none.

    Targets are matched by user (the AoR's user part, or the contact's user); where several bindings share a
    user (a shared line on several phones) the target's phone_ip picks the one whose contact or source is that
    address. A target without a user is matched by its phone_ip alone, among the bindings of users no other
    target has (the same phone's line 2); without either it is skipped.

    A binding counts for a target only when it was registered from the phone's address or one the inventory
    allows (wire_observations.SenderCheck), even when it is the user's only one: the address the registrar saw
    the REGISTER come from where the platform shows it, else the contact's host. Others are counted in
    `foreign` per address (issue 17)."""
    by_user: dict[str, list[Binding]] = {}
    by_ip: dict[str, list[Binding]] = {}
    for b in bindings:
        for u in {b.user, sip.uri_user(b.contact)}:
            if u:
                by_user.setdefault(u, []).append(b)
        for ip in {b.contact_host, b.source_ip}:
            if ip:
                by_ip.setdefault(ip, []).append(b)
    targets = list(targets)
    claimed = {t.user for t in targets if t.user}   # a binding of a known user is that user's target's alone
    out: list[Observation] = []
    senders = SenderCheck()
    for target in targets:
        if target.user:
            found = by_user.get(target.user, [])
            admitted = [b for b in found if senders.admits(target, b.source_ip or b.contact_host)]
            if foreign is not None:
                for b in found:
                    if b not in admitted:
                        count_foreign(foreign, b.source_ip or b.contact_host or "?")
            exact = [b for b in admitted if target.phone_ip and target.phone_ip == (b.source_ip or b.contact_host)]
            found = exact if len(admitted) > 1 and exact else admitted     # a shared line: the phone's own binding
        elif target.phone_ip:
            # by address, but not the binding of the same phone's other line (whose user its target has)
            found = [b for b in by_ip.get(target.phone_ip, []) if not ({b.user, sip.uri_user(b.contact)} & claimed)
                     and senders.admits(target, b.source_ip or b.contact_host)]
        else:
            continue
        active = [b for b in found if b.active]
        addr = f"{target.address[0]}:{target.address[1]}"
        if active:
            known = [b.expires_in for b in active if b.expires_in is not None]
            detail = "binding" + (f" expires={max(known)}" if known else "") + f" contacts={len(active)}"
            out.append(Observation(mac=target.mac, t=t, source=source, reg=target.reg, server=target.server,
                                   state=REGISTERED, address=addr, detail=detail,
                                   expires=max(known) if known else None))
        else:
            out.append(Observation(mac=target.mac, t=t, source=source, reg=target.reg, server=target.server,
                                   state=UNREGISTERED, address=addr, detail="no binding"))
    return out
