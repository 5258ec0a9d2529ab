"""Why a phone missed a call placed through a server: the setting of its own configuration that explains the answer.

The phone's answer alone rarely names its reason (a 400 says nothing of request validation), so the reason is
read from the configuration the phone runs, against the answer the sources document for each setting:
- 400 Bad Request and `voIpProt.SIP.requestValidation.n` by source (or both/all) for INVITE: the source check
  (conformance sipval-invite-source-refused; whether a configured server 2 passes is *disputed*, so the sentence
  says which server the call came through, not which reading the phone follows);
- 401/407 (or FreeSWITCH's CALL_REJECTED) and validation by digest (or both/all): the challenge the gateway did
  not answer (sipval-digest-challenge);
- no answer and `failOver.onlySignalWithRegistered` 1 with reRegisterOn and failRegistrationOn 1 on that server:
  the phone accepts nothing from a server that has failed (sip-invite-only-signal-with-registered);
- not bound: the gateway holds no registration of the line (with failOver.reRegisterOn 0 a UC Software phone
  never registers with server 2);
otherwise the answer itself ("486 Busy Here").
"""
from __future__ import annotations

import re

from fleet.experiment.inbound_answers import NO_ANSWER, NOT_BOUND, REFUSED, InboundAnswer

_VALIDATION = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.(method|request)$")


def invite_validations(params: dict[str, str]) -> list[tuple[str, str]]:
    """(n, method) of each requestValidation entry that applies to INVITE, in order of n."""
    methods: dict[str, str] = {}
    requests: dict[str, str] = {}
    for name, value in params.items():
        m = _VALIDATION.match(name)
        if m:
            (methods if m.group(2) == "method" else requests)[m.group(1)] = str(value).strip()
    return [(n, methods[n]) for n in sorted(requests, key=int)
            if requests[n].upper() == "INVITE" and methods.get(n) in ("source", "digest", "both", "all")]


def _server_value(params: dict[str, str], reg: int, server: int, attr: str, default: str) -> str:
    for prefix in (f"reg.{reg}.server.{server}.", f"voIpProt.server.{server}."):
        value = params.get(prefix + attr)
        if value not in (None, ""):
            return str(value).strip()
    return default


def why_missed(params: dict[str, str], answer: InboundAnswer, server: int | None, reg: int = 1) -> str:
    """One sentence naming the setting behind a missed call through `server` (None: not known), or the answer."""
    via = f"server {server}" if server is not None else "the gateway"
    said = answer.describe()
    validations = invite_validations(params)
    challenged = answer.code in (401, 407) or "CALL_REJECTED" in answer.reason
    if answer.outcome == REFUSED and answer.code == 400 or "NORMAL_TEMPORARY_FAILURE" in answer.reason:
        for n, method in validations:
            if method in ("source", "both", "all"):
                return (f"voIpProt.SIP.requestValidation.{n}.method={method} refuses INVITE from {via}: "
                        f"{answer.code or ''} {answer.reason}".rstrip())
    if answer.outcome == REFUSED and challenged:
        for n, method in validations:
            if method in ("digest", "both", "all"):
                return (f"voIpProt.SIP.requestValidation.{n}.method={method} challenges INVITE from {via}, "
                        f"which does not answer the challenge: {answer.code or ''} {answer.reason}".replace("  ", " "))
    if answer.outcome == NO_ANSWER and server is not None and all(
            _server_value(params, reg, server, f"failOver.{name}", default) == "1"
            for name, default in (("onlySignalWithRegistered", "1"), ("reRegisterOn", "0"),
                                  ("failRegistrationOn", "0"))):
        return (f"reg.{reg}.server.{server}.failOver.onlySignalWithRegistered=1 (with reRegisterOn and "
                f"failRegistrationOn 1): the phone accepts nothing from {via} once its registration there failed: "
                f"{said}")
    if answer.outcome == NOT_BOUND:
        rereg = _server_value(params, reg, server, "failOver.reRegisterOn", "") if server else ""
        hint = (f" (reg.{reg}.server.{server}.failOver.reRegisterOn=0: the phone does not register with it)"
                if rereg == "0" else "")
        return f"line {reg} is not registered with {via}{hint}: the gateway cannot route a call to it"
    return f"INVITE from {via}: {said}"
