"""How the site's gateway places a call to a phone's line, per gateway platform, and what its answer says.

An inbound call during an outage comes from the on-site gateway (the phones' fallback server). fleet makes the
gateway place one, as data per platform: a shell command run on the gateway through the router's SSH (as the
gateway's bindings are read, fleet.evidence.sources.gateway_bindings) and a parser of what it prints:

- Kamailio: the line's contact from usrloc (`kamcmd ul.lookup location s:USER`), then tm's
  `tm.t_uac_wait_block INVITE CONTACT . . HEADERS SDP` (kamailio/kamailio src/modules/tm/rpc_uac.c; kamcli's
  `uacreq` and `ping` commands use it): it blocks until the final answer and prints `{ code: N text: REASON }`.
  tm ACKs a 2xx itself. It reports no provisional: a phone that rings and is never picked up ends as tm's own 408
  when its INVITE timer (fr_inv_timer) runs out, which fleet bounds with `timeout RING` first.
  (`tm.t_uac_wait` needs an RPC transport with delayed replies: kamcmd's binrpc and the jsonrpcs FIFO refuse it.)
- FreeSWITCH: `fs_cli -x "originate {originate_timeout=RING}user/USER &hangup()"`: `+OK UUID` once answered,
  `-ERR CAUSE` otherwise (mod_commands.c originate_function), the cause mapped from the phone's SIP status by
  sofia_glue_sip_cause_to_freeswitch (400 -> NORMAL_TEMPORARY_FAILURE, 401/403/407/603 -> CALL_REJECTED, ...).
- Asterisk: `channel originate` on the CLI prints no outcome at all, so it cannot judge a call; a playbook asking
  an Asterisk gateway to place one is refused before anything runs (`ORIGINATE_REFUSED`).

Every answer becomes an `InboundAnswer`: answered or ringing (reached), refused (a final status >= 300, with the
code where the platform keeps it), no answer (tm's 408, FreeSWITCH's timer causes, or nothing within the ring
time), not bound (the gateway holds no binding for the line: it cannot route a call to it at all), or unknown
(output that is none of these: never read as reached). Parsers read bounded text in linear time.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass

MAX_OUTPUT = 64 * 1024           # more than any answer of these commands; the rest is not read
REACHED, REFUSED, NO_ANSWER, NOT_BOUND, UNKNOWN = "reached", "refused", "no-answer", "not-bound", "unknown"
ORIGINATE_REFUSED = {"asterisk": "Asterisk's CLI `channel originate` prints no outcome of the call (answered, "
                                 "refused or unanswered), so fleet cannot judge it: use a Kamailio or FreeSWITCH "
                                 "gateway for inbound calls"}
_USER = re.compile(r"^[0-9A-Za-z*#+._-]{1,64}$")


@dataclass(frozen=True)
class InboundAnswer:
    """What became of one call placed to a phone's line."""
    outcome: str                  # reached | refused | no-answer | not-bound | unknown
    code: int | None = None       # the phone's SIP status where the platform keeps it (FreeSWITCH keeps a cause)
    reason: str = ""              # the status's reason phrase, or the platform's cause name
    contact: str = ""             # where the gateway sent it (Kamailio)

    @property
    def reached(self) -> bool:
        return self.outcome == REACHED

    def describe(self) -> str:
        said = f"{self.code} {self.reason}".strip() if self.code is not None else self.reason
        return {REACHED: f"answered ({said})" if said else "answered",
                REFUSED: f"refused: {said}", NO_ANSWER: f"no answer ({said})" if said else "no answer",
                NOT_BOUND: "the gateway holds no binding for the line (it cannot route a call to it)",
                }.get(self.outcome, f"no usable answer from the gateway ({said or 'nothing recognised'})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "InboundAnswer":
        return cls(**{k: data.get(k) for k in ("outcome", "code", "reason", "contact") if k in data})


def from_status(code: int, reason: str = "", contact: str = "") -> InboundAnswer:
    """A final SIP status as an answer: 1xx/2xx reached; 408 (a caller's own timer: the phone sent no final
    answer) no answer; everything else >= 300 refused (400 request validation by source, 401/407 digest
    validation unanswered, 486 busy, 488 ...: every refusal the sources allow, conformance sipval-*)."""
    if 100 < code < 300:
        return InboundAnswer(REACHED, code, reason, contact)
    if code == 408:
        return InboundAnswer(NO_ANSWER, code, reason, contact)
    if 300 <= code < 700:
        return InboundAnswer(REFUSED, code, reason, contact)
    return InboundAnswer(UNKNOWN, code, reason, contact)


# --- Kamailio ------------------------------------------------------------------------------------------------
# kamcmd prints tm's reply struct as these four lines exactly (LF line ends, a TAB before each field)
_KAM_REPLY = re.compile(r"^\{\n\tcode: (\d{3})\n\ttext: ([^\n]{0,200})\n\}$", re.M)
_KAM_CONTACT = re.compile(r"^@contact (\S{1,512})$", re.M)
_KAM_RC = re.compile(r"^@rc (\d{1,3})$", re.M)


def parse_kamailio(text: str) -> InboundAnswer:
    """`@unbound`, or `@contact URI`, kamcmd's answer, then `@rc N` (the exit status of kamcmd under timeout(1)).
    Without both of our lines the output is cut or another program's: unknown, whatever it holds."""
    text = text[:MAX_OUTPUT]
    if re.search(r"^@unbound$", text, re.M):
        return InboundAnswer(NOT_BOUND)
    m, rc = _KAM_CONTACT.search(text), _KAM_RC.search(text)
    if not m or not rc or rc.start() < m.end():
        return InboundAnswer(UNKNOWN)
    contact, between = m.group(1), text[m.end():rc.start()]
    reply = _KAM_REPLY.search(between)
    if reply:
        return from_status(int(reply.group(1)), reply.group(2).strip(), contact)
    if rc.group(1) == "124":          # timeout(1) ended kamcmd: no final answer within the ring time
        return InboundAnswer(NO_ANSWER, None, "no final answer within the ring time", contact)
    err = re.search(r"^error:\s*([^\n]{0,200})$", between, re.M)
    return InboundAnswer(UNKNOWN, None, err.group(1).strip() if err else "", contact)


def kamailio_command(user: str, gateway: str, ring_s: int) -> str:
    """The shell text run on the gateway (see the module's docstring); `user` and `gateway` are quoted."""
    host = shlex.quote(gateway)
    return (
        f"user={shlex.quote(user)}; host={host}\n"
        'c=$(kamcmd ul.lookup location "s:$user" 2>&1 | awk \'$1 == "Address:" { print $2; exit }\')\n'
        'case "$c" in sip:*|sips:*) ;; *) echo "@unbound"; exit 0;; esac\n'
        'echo "@contact $c"\n'
        "hdr=$(printf 'From: <sip:fleet-inbound@%s>\\r\\nTo: <sip:%s@%s>\\r\\nContact: <sip:fleet-inbound@%s>\\r\\n"
        "Content-Type: application/sdp\\r\\n_' \"$host\" \"$user\" \"$host\" \"$host\"); hdr=${hdr%_}\n"
        "sdp=$(printf 'v=0\\r\\no=- 1 1 IN IP4 %s\\r\\ns=fleet\\r\\nc=IN IP4 %s\\r\\nt=0 0\\r\\n"
        "m=audio 9 RTP/AVP 0\\r\\n_' \"$host\" \"$host\"); sdp=${sdp%_}\n"
        f'timeout {int(ring_s)} kamcmd tm.t_uac_wait_block INVITE "$c" . . "$hdr" "$sdp" 2>&1\n'
        'echo "@rc $?"')


# --- FreeSWITCH ----------------------------------------------------------------------------------------------
# sofia_glue_sip_cause_to_freeswitch, read backwards: the cause names the phone's status only up to this set
FREESWITCH_CAUSES: dict[str, tuple[str, int | None]] = {
    "NORMAL_TEMPORARY_FAILURE": (REFUSED, 400),          # 400, 481, 500, 503
    "CALL_REJECTED": (REFUSED, 403),                     # 401, 402, 403, 407, 603
    "USER_BUSY": (REFUSED, 486),                         # 486, 600
    "INCOMPATIBLE_DESTINATION": (REFUSED, 488),          # 488, 606
    "UNALLOCATED_NUMBER": (REFUSED, 404),
    "NO_ROUTE_DESTINATION": (REFUSED, 404),              # 404 (older), 485, 604
    "INTERWORKING": (REFUSED, None),
    "NO_USER_RESPONSE": (NO_ANSWER, 480),
    "RECOVERY_ON_TIMER_EXPIRE": (NO_ANSWER, 408),        # 408, 504: nothing final from the phone
    "NO_ANSWER": (NO_ANSWER, None),                      # originate_timeout while ringing
    "ORIGINATOR_CANCEL": (NO_ANSWER, None),
    "USER_NOT_REGISTERED": (NOT_BOUND, None),
    "SUBSCRIBER_ABSENT": (NOT_BOUND, None),
}


def parse_freeswitch(text: str) -> InboundAnswer:
    """`+OK UUID` (answered) or `-ERR CAUSE` (mod_commands.c originate_function)."""
    text = text[:MAX_OUTPUT]
    if re.search(r"^\+OK\b", text, re.M):
        return InboundAnswer(REACHED, None, "answered")
    m = re.search(r"^-ERR ([A-Z_]{1,64})\s*$", text, re.M)
    if not m:
        return InboundAnswer(UNKNOWN)
    outcome, code = FREESWITCH_CAUSES.get(m.group(1), (REFUSED, None))
    return InboundAnswer(outcome, None, m.group(1) + (f" (SIP {code} or alike)" if code else ""))


def freeswitch_command(user: str, gateway: str, ring_s: int) -> str:
    dial = f"originate {{originate_timeout={int(ring_s)},origination_caller_id_number=fleet-inbound}}user/{user} &hangup()"
    return f"fs_cli -T {int(ring_s) * 1000 + 5000} -x {shlex.quote(dial)} 2>&1"


@dataclass(frozen=True)
class OriginatePlatform:
    name: str
    command: Callable[[str, str, int], str]       # (line user, gateway address, ring seconds) -> shell text
    parse: Callable[[str], InboundAnswer]


PLATFORMS: dict[str, OriginatePlatform] = {
    "kamailio": OriginatePlatform("kamailio", kamailio_command, parse_kamailio),
    "freeswitch": OriginatePlatform("freeswitch", freeswitch_command, parse_freeswitch),
}


def platform(name: str) -> OriginatePlatform:
    """The platform's originate data; ValueError naming why (Asterisk) or what exists."""
    if name in ORIGINATE_REFUSED:
        raise ValueError(f"gateway platform {name}: {ORIGINATE_REFUSED[name]}")
    try:
        return PLATFORMS[name]
    except KeyError:
        raise ValueError(f"gateway platform {name!r} cannot place calls; known: {', '.join(sorted(PLATFORMS))}") from None


def line_user(user: str) -> str:
    """A line's user as the command may carry it (digits and the dial-string characters); ValueError otherwise."""
    if not _USER.match(user or ""):
        raise ValueError(f"line user {str(user)[:40]!r} is not a dial string fleet places calls to")
    return user


def check(step, site, src, loc: tuple) -> None:
    """Playbook cross-checks (fleet.experiment.playbook.check_against): the site's gateway must be able to place
    the call (a gateway platform that reports a call's outcome, over the router's SSH) within the router's
    command timeout. Raises the playbook's FileError naming the step's line."""
    if site.router is None:
        raise src.error(loc, f"site {site.name} has no router: the gateway's command runs over the router's SSH")
    if site.gateway_registrar is None:
        raise src.error(loc, f"site {site.name}'s gateway has no platform (gateway: {{address, platform: kamailio}}): "
                             "fleet cannot make it place a call")
    try:
        platform(site.gateway_registrar.platform)
    except ValueError as exc:
        raise src.error(loc, str(exc)) from None
    if step.ring_s >= site.router.timeout:
        raise src.error((*loc[:-1], "ring_s"), f"ring_s {step.ring_s} must be below the router's command timeout "
                                               f"({site.router.timeout:g} s, router.timeout)")
