"""Catalogue entries shared by several families; each family module (and a plug-in family) picks the groups it has.

Sources are named per group: "SIP 2.x-3.1 admin guides" are the SoundPoint IP
Administrator's Guides (SIP 1.4 to 3.1), "UC 4.x guide" the UC Software 4.0/4.1
Administrator's Guides, "REST 5.9" the UC Software REST API reference. Entries the
reference marks uncertain say so.
"""
from __future__ import annotations

from soundpoint.families.profile import Param

_TRANSPORTS = ("DNSnaptr", "TCPpreferred", "UDPOnly", "TLS", "TCPOnly")
_MAX = 2**31 - 1


def _server(prefix: str, src: str) -> list[Param]:
    """Server attributes under reg.{x}.server.{y}. and voIpProt.server.{y}. (SIP 2.x-3.1 admin guides, polycom.md table)."""
    return [
        Param(prefix + "address", "host", source=src),
        Param(prefix + "port", "int", None, 0, 65535, source=src),
        Param(prefix + "transport", "enum", "DNSnaptr", choices=_TRANSPORTS, source=src),
        # the lower bound is the family's expires_min (300 printed for SIP 1.x-3.x)
        Param(prefix + "expires", "int", "3600", 1, _MAX, source=src),
        Param(prefix + "expires.overlap", "int", "60", 5, 65535, source=src),
        Param(prefix + "register", "bool01", "1", source=src),
        # milliseconds; 0 = RFC 3261 timers (T1 500 ms, timer B/F 32 s)
        Param(prefix + "retryTimeOut", "int", "0", 0, 65535, source=src),
        # 0 means 3; UC 4.x guide prints 0-20
        Param(prefix + "retryMaxCount", "int", "3", 0, 20, source=src),
        # 0 accepted (UC 4.x guide: 0 = use the default); shared lines only
        Param(prefix + "expires.lineSeize", "int", "30", 0, 65535, source=src),
    ]


def server(src: str = "SIP 2.x-3.1 admin guides") -> list[Param]:
    return _server("reg.{x}.server.{y}.", src) + _server("voIpProt.server.{y}.", src)


def uc_failover(src: str = "UC Software 4.1.6+ guides (polycom.md 'More facts', confirmed names and defaults)") -> list[Param]:
    """Failover controls that SIP 2.x/3.x and UC Software 4.0 do not have."""
    out = []
    for prefix in ("reg.{x}.server.{y}.", "voIpProt.server.{y}."):
        out += [
            Param(prefix + "registerRetry.baseTimeOut", "int", "60", 10, 120, source=src),
            Param(prefix + "registerRetry.maxTimeOut", "int", "60", 60, 1800, source=src),
            Param(prefix + "failOver.failBack.mode", "enum", "newRequests",
                  choices=("newRequests", "DNSTTL", "registration", "duration"), source=src),
            # 0: never fail back by time; otherwise 60-65535 s
            Param(prefix + "failOver.failBack.timeout", "int", "3600", 60, 65535, also=(0,), source=src),
            Param(prefix + "failOver.failRegistrationOn", "bool01", "0", source=src),
            # 0 (default): no REGISTER to the secondary when the primary fails (servers assumed to share registrations)
            Param(prefix + "failOver.reRegisterOn", "bool01", "0", source=src),
            # 1 (default): signalling through a server the phone is not registered with ends the call
            Param(prefix + "failOver.onlySignalWithRegistered", "bool01", "1", source=src),
        ]
    return out


def use_outbound_proxy(src: str = "UC 4.x guide (uncertain for SIP 3.x)") -> list[Param]:
    return [Param("reg.{x}.server.{y}.useOutboundProxy", "bool01", "1", source=src)]


def _proxy(prefix: str, src: str) -> list[Param]:
    return [Param(prefix + "address", "host", source=src), Param(prefix + "port", "int", "0", 0, 65535, source=src),
            Param(prefix + "transport", "enum", "DNSnaptr", choices=_TRANSPORTS, source=src)]


def outbound_proxy_global(src: str = "SIP 2.x-3.1 admin guides") -> list[Param]:
    """voIpProt.SIP.outboundProxy.*: TB 5844 warns an outbound proxy unreachable in fallback breaks server 2."""
    return _proxy("voIpProt.SIP.outboundProxy.", src)


def outbound_proxy_per_line(src: str = "SIP 3.x admin guide, UC 4.x guide") -> list[Param]:
    return _proxy("reg.{x}.outboundProxy.", src)


def registration(src: str = "SIP 2.x-3.1 admin guides") -> list[Param]:
    return [Param("reg.{x}.address", "str", source=src), Param("reg.{x}.displayName", "str", source=src),
            Param("reg.{x}.label", "str", source=src), Param("reg.{x}.auth.userId", "str", source=src),
            Param("reg.{x}.auth.password", "str", secret=True, source=src),
            Param("reg.{x}.type", "enum", "private", choices=("private", "shared"), source=src)]


def check_sync(src: str = "SIP 2.x-3.1 admin guides") -> list[Param]:
    return [Param("voIpProt.SIP.specialEvent.checkSync.alwaysReboot", "bool01", "0", source=src),
            Param("log.upload.period", "int", "172800", 0, _MAX, source=src)]


def request_validation(src: str = "SIP 1.4 guide 4.6.2.1.3.3; SIP 2.2 guide A-14; UC 4.1.6 guide p. 57") -> list[Param]:
    """voIpProt.SIP.requestValidation.*: the phone refuses requests (INVITE, NOTIFY, ...) not from one of its
    configured registration servers (`source`), challenges them with the line's credentials (`digest`), or both
    (`both` or `all`, the same: "both or all: apply both of the above methods")."""
    p = "voIpProt.SIP.requestValidation."
    return [Param(p + "{n}.method", "enum", "", choices=("", "source", "digest", "both", "all"), source=src),
            Param(p + "{n}.request", "str", source=src),
            Param(p + "{n}.request.{y}.event", "str", source=src),
            Param(p + "digest.realm", "str", "PolycomSPIP", source=src)]


def web_apps(src: str = "Web Application for Polycom Phones (SIP 3.1, UC 5.0); names uncertain in detail") -> list[Param]:
    """Telephone notification, state polling (with its own credentials) and push."""
    return [Param("apps.telNotification.URL", "str", source=src),
            Param("apps.telNotification.lineRegistrationEvent", "bool01", "1", source=src),
            # set (and the response mode not 0): the phone POSTs its state there instead of answering the poll;
            # unset: "the requested information will not be sent" (SIP 3.1 developer's guide p. 2-32)
            Param("apps.statePolling.URL", "str", source=src),
            # 0 = requestor: the state comes back in the HTTP answer (rdbahm/Posh-UCS:Posh-UCS/UcsPoll.psm1,
            # nickrobinson/sipphone-automation:README.md); any other value: pushed to apps.statePolling.URL. Only 0 is
            # shown by a source, the push value 1 is *uncertain*; no default is printed (corpus area `polling`)
            Param("apps.statePolling.responseMode", "enum", None, choices=("0", "1"),
                  source="rdbahm/Posh-UCS:Posh-UCS/UcsPoll.psm1 (0 = requestor); the push value 1 uncertain"),
            Param("apps.statePolling.username", "str", source=src),
            Param("apps.statePolling.password", "str", secret=True, source=src),
            Param("apps.push.username", "str", source=src),
            Param("apps.push.password", "str", secret=True, source=src)]


def device(src: str = "UC 4.x guide: device.* applies only with device.set=1 and its .set companion") -> list[Param]:
    """device.*: applied only when device.set=1 and the parameter's own `.set` is 1 (polycom.md 'More facts')."""
    # text, not host: the lab (and some sites) write host:port here (*uncertain* whether real phones accept it)
    own = [Param("device.syslog.serverName", "str", source=src),
           Param("device.syslog.transport", "enum", "UDP", choices=("None", "UDP", "TCP", "TLS"), source=src),
           Param("device.syslog.facility", "int", "16", 0, 23, source=src),
           Param("device.syslog.renderLevel", "int", "6", 0, 6, source=src),
           Param("device.syslog.prependMac", "bool01", "1", source=src),
           Param("device.auth.localAdminPassword", "str", secret=True, source=src),
           Param("device.auth.localUserPassword", "str", secret=True, source=src),
           Param("device.prov.user", "str", source=src),
           Param("device.prov.password", "str", secret=True, source=src)]
    companions = [Param(p.name + ".set", "bool01", "0", source=src) for p in own]
    return [Param("device.set", "bool01", "0", source=src)] + own + companions


def rest(src: str = "REST 5.9 manual (confirmed)") -> list[Param]:
    return [Param("apps.restapi.enabled", "bool01", "0", source=src)]
