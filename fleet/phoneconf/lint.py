"""Primary/fallback configurations that cannot work on a phone's firmware, found before anything is pushed.

A rollout's dry run shows these per phone, so an operator learns before the
next WAN outage (not during it) that server 2 will never see a REGISTER, that
an outbound proxy reachable only over the WAN takes server 2 down with the
primary (Polycom TB 5844), or that the phone will refuse calls from an address of its provider that its
configured servers do not resolve to (request validation by source).
They are warnings, not errors: the site may know better (a shared-registration
pair of servers, a proxy on the LAN). A fallback that is the proxy itself (the
LAN gateway as the phones' outbound proxy to the provider) is no such problem.
"""
from __future__ import annotations

import ipaddress
import re

from fleet.phoneconf.predict import failover_problem, servers

SOURCE_METHODS = ("source", "both", "all")   # "both or all: apply both of the above methods" (SIP 2.2 guide)
_VALIDATION = re.compile(r"^voIpProt\.SIP\.requestValidation\.(\d+)\.(method|request)$")


def _proxy(params: dict[str, str], reg: int) -> str:
    return params.get(f"reg.{reg}.outboundProxy.address") or params.get("voIpProt.SIP.outboundProxy.address", "")


def _proxy_problem(params: dict[str, str], reg: int, family: str | None) -> str | None:
    """A fallback server whose requests go through the outbound proxy (useOutboundProxy not 0). Not when the
    fallback is the proxy itself (the site gateway doubling as the phones' proxy to the provider): its requests
    go to that address either way, so the proxy adds nothing that could fail with the primary."""
    proxy = _proxy(params, reg)
    if not proxy:
        return None
    stuck = [s.index for s in servers(params, reg, family)[1:]
             if params.get(f"reg.{reg}.server.{s.index}.useOutboundProxy", "1") != "0"
             and s.address.strip().lower() != proxy.strip().lower()]
    if not stuck:
        return None
    which = ", ".join(str(i) for i in stuck)
    return (f"outbound proxy {proxy} is used for fallback server {which} too "
            f"(reg.{reg}.server.{stuck[0]}.useOutboundProxy is not 0): if the proxy is reached over the WAN, "
            "the fallback fails with the primary (TB 5844)")


def _invite_validation(params: dict[str, str], reg: int, family: str | None) -> str | None:
    """INVITE validated by source: the phone accepts calls only from an address of one of its *configured*
    registration servers, registered with or not (SIP 1.4 guide 4.6.2.1.3.3, SIP 2.2 guide A-14: "a server
    belonging to the set of target registration servers"; `both` and `all` include the check). Server 2 can
    ring the phone; what cannot is a server named by DNS whose calls come from an address the name does not
    resolve to (a provider's pool of SBCs): such a call is answered 400 Bad Request (operators' reports)."""
    methods: dict[str, str] = {}
    requests: dict[str, str] = {}
    for name, value in params.items():
        m = _VALIDATION.match(name)
        if m:
            (methods if m.group(2) == "method" else requests)[m.group(1)] = str(value)
    named = [s for s in servers(params, reg, family) if not _is_ip(s.address)]
    for n, request in sorted(requests.items()):
        if request.upper() == "INVITE" and methods.get(n) in SOURCE_METHODS and named:
            which = ", ".join(f"server {s.index} ({s.address})" for s in named[:3])
            return (f"voIpProt.SIP.requestValidation.{n} checks the source of INVITEs: the phone takes calls only "
                    f"from the addresses of its configured registration servers, and {which} is a DNS name: a call "
                    "from any other address of that provider is refused with 400 Bad Request")
    return None


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return True


def problems(params: dict[str, str], family: str | None, reg: int = 1) -> list[str]:
    """Every reason registration `reg` cannot fail over and back as R1-R7 expect; empty when none is known."""
    found = []
    why = failover_problem(params, reg, family)
    if why and servers(params, reg, family)[1:]:   # a phone with no fallback at all is a choice, not a mistake
        found.append(why)
    for check in (_proxy_problem(params, reg, family), _invite_validation(params, reg, family)):
        if check:
            found.append(check)
    return found
