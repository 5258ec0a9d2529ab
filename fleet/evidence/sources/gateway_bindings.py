"""The gateway's own registrar: who is bound to it and until when, per gateway platform, as data.

An on-site gateway knows exactly which phones hold a binding with it, so its
registrar is the second per-server source beside the wire. Each platform is a
shell command (run on the gateway through the router/gateway driver's SSH) and
a parser of its text output:
- Kamailio: `ul.dump` over JSON-RPC where jsonrpcs' FIFO is there, else kamcmd's
  `ul.dump brief` and one `ul.lookup` per AoR (usrloc's tree: AoR, then per
  contact Address, Expires in seconds remaining, or "permanent", "expired",
  "deleted"); read by structure, never by a header value's text (see below);
- Asterisk: `pjsip show contacts` (AoR/URI, hash, status, RTT; no expiry),
  with the registrar's AstDB records (`database show registrar/contact`,
  JSON with the absolute expiration_time) for the expiry;
- FreeSWITCH: `show registrations` (CSV: reg_user, realm, token, url, expires
  as an absolute time, network_ip, network_port, network_proto, hostname).
Absolute times are judged against the gateway's own clock: each command first
prints `@now <epoch seconds>` from the gateway, so clock skew between gateway
and controller does not shorten or stretch a binding.

Parsers accept junk (banners, warnings, cut output) and skip what they do not
recognise; a line they cannot read never invents a binding, and a record they
cannot read makes its own user unreadable (no observation), not the answer.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fleet.drivers.device_json import device_json
from fleet.state.observe import REGISTERED, UNREGISTERED, Observation
from sipwire import message as sip
from fleet.evidence.wire.attribution import SenderCheck, WireTarget, count_foreign

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
#
# usrloc keeps a header's value as the phone sent it, folding included (CRLF or a bare LF, then a TAB or a space),
# and kamcmd prints strings raw: a User-Agent can carry lines that look like kamcmd's own, a fake contact of
# another user among them, or an unmatched "{". So fleet reads Kamailio by structure:
# - JSON-RPC (the jsonrpcs module's FIFO, on by default in Kamailio's own kamailio.cfg): `ul.dump` as JSON, where
#   every value is an escaped string of its own (answer section `@jsonrpc`);
# - without it, kamcmd per AoR: `ul.dump brief` lists the AoRs (names only: no header text in it), then one
#   `ul.lookup TABLE AOR` each, under a `@aor TABLE AOR` line of ours. A folded value's lines all start with a
#   space or a TAB, so a line at column 0 is ours or kamcmd's, never a value's: whatever a User-Agent carries stays
#   inside its own AoR's section, and the section is read as that AoR's alone (a malformed one is that user's
#   loss, "unreadable", never another user's binding and never the whole answer's);
#   inside a section, a contact that shows one of usrloc's keys twice is unreadable too (ul_rpc.c prints each key
#   once, and every key from User-Agent on always: a folded User-Agent saying `Received: ...` repeats one);
# - a whole `kamcmd ul.dump` text is still read (captured answers), splitting lines on LF only and opening blocks
#   only on kamcmd's own struct names; an injected AoR block shows as more AoRs than Kamailio's own count.

_KV = re.compile(r"^\s*([A-Za-z][A-Za-z-]*):(.*)$")      # linear: the value is stripped afterwards
# the struct names kamcmd prints as "Name: {" in ul.dump and ul.lookup answers (modules/usrloc/ul_rpc.c)
_STRUCT_OPEN = re.compile(r"^\s*(?:(?:Domains|Domain|AoRs|Info|Contacts|Contact|Stats):\s*)?\{\s*$")
_STRUCT_CLOSE = re.compile(r"^\s*\}\s*$")
_TOO_BIG = re.compile(r"reply too big", re.I)
KAMAILIO_MAX_ANSWER = 64 * 1024 * 1024      # a bigger answer is refused, not parsed


class Bindings(list):
    """The bindings of an answer, with the users whose record could not be read (`unreadable`): for them the
    answer says nothing (neither bound nor unbound), so no observation may be made.

    `senders_recorded` False: the answer is text in which a value could still forge a whole, well-formed contact
    (kamcmd prints values raw: a User-Agent folded into balanced lines can split its own contact in two, each key
    once), so its `source_ip` is no better than the Contact text and cannot tell the phones of a shared AoR apart
    (`observations`). JSON-RPC, AstDB's and FreeSWITCH's records keep it in a field of its own."""

    def __init__(self, items: Iterable[Binding] = (), unreadable: Iterable[str] = (), senders_recorded: bool = True
                 ) -> None:
        super().__init__(items)
        self.unreadable: set[str] = set(unreadable)
        self.senders_recorded = senders_recorded


def _lines(text: str) -> list[str]:
    """kamcmd ends its lines with LF: a CR, VT, FF or U+2028 inside a value is the value's (str.splitlines would
    split there)."""
    return text.split("\n")


def _too_big(text: str) -> None:
    if _TOO_BIG.search(text):
        raise GatewayOutputError(
            "Kamailio refused the ul.dump answer as too big for its control socket (kamcmd: 'reply too big'): raise "
            "the ctl module's binrpc_max_body_size (and binrpc_struct_max_body_size), e.g. "
            'modparam("ctl", "binrpc_max_body_size", 1024) in kamailio.cfg (KiB; kamailio issue #1127)')


def _contact_binding(aor: str, fields: dict, strict_types: bool) -> Binding | None:
    """One usrloc contact (ul_rpc.c rpc_dump_contact: Address, Expires as seconds left or "permanent", "deleted",
    "expired", ..., Received, State) as a binding; None when it cannot be read (never a guess)."""
    address = fields.get("Address")
    if not isinstance(address, str) or not address.lower().startswith(("sip:", "sips:")) or any(
            c in address for c in " \t\r\n"):
        return None
    raw = fields.get("Expires", "")
    state = fields.get("State", "")
    if not isinstance(state, str):
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        expires: int | None = max(0, raw)
    elif isinstance(raw, str) and raw.lstrip("-").isdigit() and not strict_types:
        expires = max(0, int(raw))
    elif isinstance(raw, str) and raw.lower() == "permanent":
        expires = None
    elif isinstance(raw, str) and raw.lower() in ("expired", "deleted"):
        expires, state = 0, raw.lower()
    else:
        return None
    received = fields.get("Received", "")
    src = ""
    if isinstance(received, str) and received.lower().startswith("sip:"):
        try:
            src = sip.uri_host_port(received)[0]
        except sip.SipParseError:
            src = ""
    ua = fields.get("User-Agent", "")
    return Binding(aor=aor, contact=address, expires_in=expires, status=state, source_ip=src,
                   user_agent=ua if isinstance(ua, str) else "")


def _user_of(aor: str) -> str:
    return aor.split("@", 1)[0].removeprefix("sip:").removeprefix("sips:")


def parse_kamailio(text: str, now: float | None = None) -> Bindings:
    """Whichever form the gateway command got: JSON-RPC, kamcmd per AoR, or a whole `kamcmd ul.dump` text."""
    if len(text) > KAMAILIO_MAX_ANSWER:
        raise GatewayOutputError(f"Kamailio answer of {len(text)} characters is over fleet's cap "
                                 f"({KAMAILIO_MAX_ANSWER}); not read")
    lines = _lines(text)
    if "@jsonrpc" in lines:
        return parse_kamailio_json(text[text.index("@jsonrpc\n") + len("@jsonrpc\n"):] if "@jsonrpc\n" in text else "")
    if any(line.startswith("@aor ") or line.startswith("@brief") for line in lines):
        return parse_kamailio_lookups(text)
    return parse_kamailio_dump(text)


def parse_kamailio_json(text: str) -> Bindings:
    """jsonrpcs' answer to `ul.dump`: {"result": {"Domains": [{"Domain": {"Domain", "Size", "AoRs": [{"Info":
    {"AoR", "HashID", "Contacts": [{"Contact": {...}}]}}], "Stats"}}]}}. Every check is local to one AoR: one whose
    fields have the wrong types is unreadable, the others stand."""
    try:
        doc = device_json(text)
    except ValueError:
        raise GatewayOutputError("Kamailio's JSON-RPC answer is not JSON (cut?)") from None
    if not isinstance(doc, dict):
        raise GatewayOutputError("Kamailio's JSON-RPC answer is not a JSON-RPC object")
    if "error" in doc:
        err = doc["error"] if isinstance(doc["error"], dict) else {}
        message = str(err.get("message", ""))[:200]
        _too_big(message)
        raise GatewayOutputError(f"Kamailio's JSON-RPC answered an error: {err.get('code', '?')} {message}")
    result = doc.get("result")
    domains = result.get("Domains") if isinstance(result, dict) else None
    if not isinstance(domains, list):
        raise GatewayOutputError("Kamailio's JSON-RPC answer has no result.Domains list (not ul.dump's answer)")
    out = Bindings()
    for dom in domains:
        domain = dom.get("Domain") if isinstance(dom, dict) else None
        aors = domain.get("AoRs") if isinstance(domain, dict) else None
        if not isinstance(aors, list):
            raise GatewayOutputError("Kamailio's JSON-RPC answer has a domain without an AoRs list")
        for item in aors:
            info = item.get("Info") if isinstance(item, dict) else None
            aor = info.get("AoR") if isinstance(info, dict) else None
            if not isinstance(aor, str) or not aor:
                continue                      # no AoR to blame: nothing can be said of anyone from it
            contacts = info.get("Contacts")
            if not isinstance(contacts, list):
                out.unreadable.add(_user_of(aor))
                continue
            found: list[Binding] = []
            for c in contacts:
                fields = c.get("Contact") if isinstance(c, dict) else None
                b = _contact_binding(aor, fields, strict_types=True) if isinstance(fields, dict) else None
                if b is None:
                    found = []
                    out.unreadable.add(_user_of(aor))
                    break
                found.append(b)
            out.extend(found)
    return out


def parse_kamailio_lookups(text: str) -> Bindings:
    """`@brief` then kamcmd's `ul.dump brief`, then per AoR `@aor TABLE AOR` and kamcmd's `ul.lookup` answer."""
    lines = _lines(text)
    sections: list[tuple[str, list[str]]] = []
    brief: list[str] | None = None
    current: list[str] | None = None
    for line in lines:
        if line.startswith("@brief"):
            brief = current = []
        elif line.startswith("@aor "):
            current = []
            sections.append((line[5:].strip(), current))
        elif current is not None:
            current.append(line)
    if brief is None:
        raise GatewayOutputError("Kamailio answer lists AoRs without the `ul.dump brief` they came from")
    brief_text = "\n".join(brief)
    _too_big(brief_text)
    if not re.search(r"^\s*AoRs:\s*\{", brief_text, re.M):
        raise GatewayOutputError("Kamailio's `ul.dump brief` is not an answer (no AoRs section): "
                                 + (brief_text.strip().splitlines() or ["no output"])[0][:200])
    listed = [m.group(1) for m in re.finditer(r"^\t+AoR: (\S+)$", brief_text, re.M)]
    out = Bindings(senders_recorded=False)
    seen: set[str] = set()
    for head, body in sections:
        table, _, aor = head.partition(" ")
        if not aor or aor not in listed:
            continue                          # not an AoR Kamailio listed: not ours to read
        seen.add(aor)
        found = _lookup_section(aor, body)
        if found is None:
            out.unreadable.add(_user_of(aor))
        else:
            out.extend(found)
    for aor in listed:
        if aor not in seen:
            out.unreadable.add(_user_of(aor))     # listed but not looked up (a cut answer)
    return out


def _lookup_section(aor: str, body: list[str]) -> list[Binding] | None:
    """One `kamcmd ul.lookup` answer: its contacts, all of `aor`; None when it cannot be read."""
    text = "\n".join(body).strip("\n")
    first = text.split("\n", 1)[0]
    if first.startswith("error:"):
        # ul_rpc.c: a record gone (expired) between the brief dump and the lookup, or one with no valid contact
        return [] if re.search(r"AOR not found|AOR has no contacts", first) else None
    rows = [line for line in text.split("\n") if line.strip()]
    if not rows or rows[0] != "{" or rows[-1] != "}":
        return None
    opened = sum(1 for line in rows if _STRUCT_OPEN.match(line))
    closed = sum(1 for line in rows if _STRUCT_CLOSE.match(line))
    if opened != closed or any(not line.startswith(("\t", " ")) for line in rows[1:-1]):
        return None
    out: list[Binding] = []
    cur: dict[str, str] | None = None
    for line in rows[1:-1]:
        if re.match(r"^\t\tContact: \{$", line):
            if cur is not None:
                b = _contact_binding(aor, cur, strict_types=False)
                if b is None:
                    return None
                out.append(b)
            cur = {}
            continue
        m = re.match(r"^\t\t\t([A-Za-z][A-Za-z-]*): (.*)$", line)
        if m and cur is not None:
            if m.group(1) in cur:
                return None         # a key twice: a value (a folded User-Agent) carries lines of its own
            cur[m.group(1)] = m.group(2).strip()
    if cur is not None:
        b = _contact_binding(aor, cur, strict_types=False)
        if b is None:
            return None
        out.append(b)
    return out


def parse_kamailio_dump(text: str, now: float | None = None) -> Bindings:
    """A whole `kamcmd ul.dump` (the full form; the `brief` form lists AoRs only and yields no binding)."""
    _too_big(text)
    lines = _lines(text)
    if not re.search(r"^\s*Domain:\s*\S", text, re.M) or not re.search(r"^\s*AoRs:\s*\{", text, re.M):
        raise GatewayOutputError("not a Kamailio ul.dump answer (no Domain and AoRs sections)")
    opened = sum(1 for line in lines if _STRUCT_OPEN.match(line))
    closed = sum(1 for line in lines if _STRUCT_CLOSE.match(line))
    if opened != closed:
        raise GatewayOutputError(f"Kamailio ul.dump answer is cut ({opened} blocks opened, {closed} closed)")
    if re.search(r"^\s*AoR:\s*\S", text, re.M) and not re.search(r"^\s*Address:\s*\S", text, re.M):
        raise GatewayOutputError("Kamailio ul.dump answer lists AoRs without contacts (the 'brief' form?); "
                                 "run `kamcmd ul.dump` without 'brief'")
    infos = sum(1 for line in lines if re.match(r"^\s*Info:\s*\{\s*$", line))
    counted = [int(m.group(1)) for m in re.finditer(r"^\s*Records:\s*(\d+)\s*$", text, re.M)]
    if counted and infos != sum(counted):
        raise GatewayOutputError(
            f"Kamailio ul.dump text shows {infos} AoRs where Kamailio counted {sum(counted)}: a header value "
            "(a folded User-Agent) carries lines of its own, so this text cannot be read safely; fleet reads "
            "Kamailio over JSON-RPC or per AoR (its own gateway command)")
    out = Bindings(senders_recorded=False)
    aor = ""
    cur: dict[str, str] | None = None
    repeated: set[str] = set()        # AoRs with a contact that shows a key twice (see _lookup_section)

    def flush() -> None:
        nonlocal cur
        if cur is not None and aor and "Address" in cur and aor not in repeated:
            b = _contact_binding(aor, cur, strict_types=False)
            if b is not None:
                out.append(b)
        cur = None

    for line in lines:
        if re.match(r"^\s*Contact:\s*\{\s*$", line):
            flush()
            cur = {}
            continue
        if re.match(r"^\s*Info:\s*\{\s*$", line):
            flush()
            aor = ""
            continue
        m = _KV.match(line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip()
        if key == "AoR":
            flush()
            aor = value if value and value != "{" else ""
        elif cur is not None and not _STRUCT_OPEN.match(line):
            if key in cur:
                repeated.add(aor)
            cur[key] = value
    flush()
    if repeated:
        out = Bindings([b for b in out if b.aor not in repeated], out.unreadable | {_user_of(a) for a in repeated if a},
                       senders_recorded=False)
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
                rec = device_json(m.group("json"))
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

# Kamailio: JSON-RPC over jsonrpcs' FIFO where there is one (its path and reply directory: KAMAILIO_RPC_FIFO and
# KAMAILIO_RPC_REPLY_DIR on the gateway, else Kamailio's defaults), otherwise kamcmd per AoR. kamcmd reports its
# faults ("reply too big", "500 - ...") on stderr, which the router's SSH run drops: hence 2>&1.
KAMAILIO_COMMAND = r"""fifo=${KAMAILIO_RPC_FIFO:-}
if [ -z "$fifo" ]; then
  for f in /run/kamailio/kamailio_rpc.fifo /var/run/kamailio/kamailio_rpc.fifo; do
    if [ -p "$f" ]; then fifo=$f; break; fi
  done
fi
if [ -n "$fifo" ] && [ -p "$fifo" ] && [ -w "$fifo" ] && command -v timeout >/dev/null 2>&1; then
  dir=${KAMAILIO_RPC_REPLY_DIR:-/tmp}
  name="fleet_ul_$$_$(date +%s)"
  if (umask 077; mkfifo "$dir/$name") 2>/dev/null; then
    ( sleep 0.2; timeout 3 sh -c 'printf "%s\n" "$2" > "$1"' fleet "$fifo" \
        "{\"jsonrpc\": \"2.0\", \"method\": \"ul.dump\", \"reply_name\": \"$name\", \"id\": 1}" ) &
    out=$(timeout 5 cat "$dir/$name")
    rm -f "$dir/$name"
    if [ -n "$out" ]; then echo "@jsonrpc"; printf '%s\n' "$out"; exit 0; fi
  fi
fi
brief=$(kamcmd ul.dump brief 2>&1)
echo "@brief"
printf '%s\n' "$brief"
printf '%s\n' "$brief" | awk '/^\t\t\tDomain: / { d = $2 } /^\t\t\t\tAoR: / { print d, $2 }' |
while read -r table aor; do
  printf '@aor %s %s\n' "$table" "$aor"
  kamcmd ul.lookup "s:$table" "s:$aor" 2>&1
done"""

PLATFORMS: dict[str, GatewayPlatform] = {
    # 2>&1: kamcmd reports a fault ("reply too big", "500 - ...") on stderr, which the router's SSH run drops
    "kamailio": GatewayPlatform("kamailio", KAMAILIO_COMMAND, parse_kamailio),
    "asterisk": GatewayPlatform("asterisk", _NOW_CMD + "asterisk -rx 'database show registrar/contact'; "
                                "asterisk -rx 'pjsip show contacts'", parse_asterisk),
    "freeswitch": GatewayPlatform("freeswitch", _NOW_CMD + "fs_cli -x 'show registrations'", parse_freeswitch),
}


def platform(name: str) -> GatewayPlatform:
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"unknown gateway platform {name!r}; known: {', '.join(sorted(PLATFORMS))}") from None


def _sender(b: Binding, shared: bool, recorded: bool) -> str:
    """Where `b` counts as registered from ("" when unknown): the sender the registrar recorded, else (an AoR one
    phone holds) the contact's host; on a shared AoR only a recorded sender from a field of its own (`observations`)."""
    if shared:
        return b.source_ip if recorded else ""
    return b.source_ip or b.contact_host


def observations(bindings: Iterable[Binding], targets: Iterable[WireTarget], t: float,
                 source: str = "gateway", foreign: Counter | None = None,
                 pause: Callable[[], object] | None = None, pause_every: int = 250) -> list[Observation]:
    """One observation per target (the gateway's server entry of each phone): registered with the binding's
    expiry when the registrar holds an active binding for the target's user, unregistered when it holds none.

    Targets are matched by user (the AoR's user part, or the contact's user); where several bindings share a
    user (a shared line on several phones) the target's phone_ip picks the one whose contact or source is that
    address. A target without a user is matched by its phone_ip alone, among the bindings of users no other
    target has (the same phone's line 2); without either it is skipped.

    A binding counts for a target only when it was registered from the phone's address or one the inventory
    allows (wire_observations.SenderCheck), even when it is the user's only one: the address the registrar saw
    the REGISTER come from where the platform shows it, else the contact's host. Others are counted in
    `foreign` per address (issue 17). A user whose bindings are all foreign gets no observation: its phone may
    have moved (DHCP) or not registered there, and the answer cannot say which. A target's `allowed` may carry
    addresses the wire sources learned for it (GatewayPoller).

    The contact's host stands in for the sender only where the platform does not show one (Kamailio without
    nathelper's received: `Received: [not set]`; its `Socket` is Kamailio's own listening socket, not the
    sender's), and only for an AoR one phone holds: it is text the registering party wrote, but the registrar
    accepted it with that AoR's own credentials and sends that AoR's calls there, so a binding with the phone's
    address as contact reaches the phone. On a shared AoR (several phones of the targets hold its user) any of
    them could write another's address, so there only a sender the registrar recorded in a field of its own
    counts (`Bindings.senders_recorded`: Kamailio over JSON-RPC with received recorded, e.g.
    fix_nated_register or received_avp; Asterisk's via_addr; FreeSWITCH's network_ip); a binding without
    one leaves that AoR's phones without an observation (neither bound nor unbound).

    `pause`, when given, is called every `pause_every` targets (the poller's thread gives the GIL back to the
    collector's event loop there); it changes nothing in the outcome."""
    pause_every = max(1, pause_every)
    # a user whose record the answer could not read (Bindings.unreadable) is neither bound nor unbound: no observation
    unreadable = set(getattr(bindings, "unreadable", ()))
    by_user: dict[str, list[Binding]] = {}
    by_ip: dict[str, list[Binding]] = {}
    for b in bindings:
        # the AoR's user, which the registrar keyed the binding by; the contact's user (text the sender wrote)
        # only where the platform shows no AoR: a binding of X whose contact names Y is never Y's
        u = b.user or sip.uri_user(b.contact)
        if u:
            by_user.setdefault(u, []).append(b)
        for ip in {b.contact_host, b.source_ip}:
            if ip:
                by_ip.setdefault(ip, []).append(b)
    targets = list(targets)
    claimed = {t.user for t in targets if t.user}   # a binding of a known user is that user's target's alone
    phones_of: dict[str, set[str]] = {}
    for t_ in targets:
        if t_.user:
            phones_of.setdefault(t_.user, set()).add(t_.mac)
    recorded = getattr(bindings, "senders_recorded", True)
    out: list[Observation] = []
    senders = SenderCheck()
    for n, target in enumerate(targets):
        if pause is not None and n % pause_every == pause_every - 1:
            pause()     # the caller's thread lets others have the GIL now and then (GatewayPoller.deliver)
        if target.user in unreadable:
            continue
        if target.user:
            found = by_user.get(target.user, [])
            shared = len(phones_of[target.user]) > 1
            if any(not _sender(b, shared, recorded) for b in found):
                continue        # a binding that might be this phone's: neither bound nor unbound
            admitted = [b for b in found if senders.admits(target, _sender(b, shared, recorded))]
            if foreign is not None:
                for b in found:
                    if b not in admitted:
                        count_foreign(foreign, _sender(b, shared, recorded))
            if found and not admitted:
                continue        # only foreign bindings (the phone moved, or someone else's): they say nothing of it
            exact = [b for b in admitted if target.phone_ip and target.phone_ip == _sender(b, shared, recorded)]
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
