"""The Polycom parameters we manage, and the provisioning files they are rendered into.

Pure functions, no I/O. Facts come from shared/reference/polycom.md; where the
reference marks something uncertain it says so beside the entry. The first
occurrence of a parameter wins on the phone, so the per-phone file is listed
before the site file in CONFIG_FILES.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

# Firmware families: the 300 s minimum `expires` is printed for SIP 1.x-3.x; later firmware (UC 4/5)
# accepts shorter values (uncertain: taken as 10 s here, enough for lab-speed experiments).
EXPIRES_MIN = {"sip-1.x": 300, "sip-2.x": 300, "sip-3.x": 300, "uc-4.x": 10, "uc-5.x": 10}
FAILBACK_FAMILIES = {"uc-4.x", "uc-5.x"}


class ParameterError(ValueError):
    """An unknown parameter or a value out of range; the message names the parameter."""


@dataclass(frozen=True)
class Param:
    pattern: str            # with x = registration, y = server
    kind: str               # int, bool01, str, enum, host
    default: str | None = None
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    families: frozenset[str] | None = None   # None: every family
    secret: bool = False     # holds a password: only `secret:`/`env:` references, shown as *** (fleet.secret_params)


_SERVER_ATTRS = [
    Param("address", "host"),
    Param("port", "int", None, 0, 65535),
    Param("transport", "enum", "DNSnaptr", choices=("DNSnaptr", "TCPpreferred", "UDPOnly", "TLS", "TCPOnly")),
    Param("expires", "int", "3600", 1, 2**31 - 1),      # lower bound per family, below
    Param("expires.overlap", "int", "60", 5, 65535),
    Param("register", "bool01", "1"),
    Param("retryTimeOut", "int", "0", 0, 2**31 - 1),
    Param("retryMaxCount", "int", "3", 0, 100),
    Param("expires.lineSeize", "int", "30", 10, 2**31 - 1),
    # UC Software: retry spacing after a failed registration (the seed's "30 to 60 seconds"); name uncertain
    Param("registerRetry.baseTimeOut", "int", "60", 1, 3600),
    Param("registerRetry.maxTimeout", "int", "180", 1, 3600),
    Param("failOver.failBack.mode", "enum", "newRequests", choices=("newRequests", "DNSTTL", "registration", "duration"),
          families=frozenset(FAILBACK_FAMILIES)),
    Param("failOver.failBack.timeout", "int", "3600", 0, 65535, families=frozenset(FAILBACK_FAMILIES)),
    Param("failOver.failRegistrationOn", "bool01", "1", families=frozenset(FAILBACK_FAMILIES)),
]

CATALOGUE: list[tuple[re.Pattern, Param]] = []


def _add(prefix_regex: str, p: Param) -> None:
    CATALOGUE.append((re.compile("^" + prefix_regex + re.escape(p.pattern) + "$"), p))


for _p in _SERVER_ATTRS:
    _add(r"reg\.(?P<x>[0-9]+)\.server\.(?P<y>[0-9]+)\.", _p)
    _add(r"voIpProt\.server\.(?P<y>[0-9]+)\.", _p)
for _p in [Param("address", "str"), Param("displayName", "str"), Param("label", "str"), Param("auth.userId", "str"),
           Param("auth.password", "str", secret=True), Param("type", "enum", "private", choices=("private", "shared"))]:
    _add(r"reg\.(?P<x>[0-9]+)\.", _p)
for _p in [Param("device.syslog.serverName", "str"), Param("device.syslog.serverPort", "int", "514", 1, 65535),
           Param("apps.telNotification.URL", "str"), Param("apps.telNotification.lineRegistrationEvent", "bool01", "1"),
           Param("apps.restapi.enabled", "bool01", "0", families=frozenset({"uc-5.x"})),
           Param("apps.statePolling.URL", "str"), Param("apps.statePolling.username", "str"),
           Param("apps.statePolling.password", "str", secret=True),
           Param("apps.push.username", "str"),
           Param("apps.push.password", "str", secret=True),
           # device.* credentials (apply only with device.set=1): admin and user passwords of the phone's web UI
           # and the boot server account; names as in the UC Software admin guide (uncertain for SIP 2.x/3.x)
           Param("device.auth.localAdminPassword", "str", secret=True),
           Param("device.auth.localUserPassword", "str", secret=True),
           Param("device.prov.user", "str"),
           Param("device.prov.password", "str", secret=True),
           Param("voIpProt.SIP.specialEvent.checkSync.alwaysReboot", "bool01", "0"),
           Param("log.upload.period", "int", "172800", 0, 2**31 - 1)]:
    _add("", _p)


def lookup(name: str) -> Param | None:
    for rx, p in CATALOGUE:
        if rx.match(name):
            return p
    return None


def check(name: str, value: str, family: str) -> str:
    """The value as the phone will read it, or ParameterError naming the parameter."""
    p = lookup(name)
    if p is None:
        raise ParameterError(f"{name}: not a parameter this tool manages (check the spelling)")
    if p.families is not None and family not in p.families:
        raise ParameterError(f"{name}: not supported by firmware family {family}")
    value = str(value).strip()
    if p.secret:
        return value
    if p.kind == "int":
        if value == "" and p.default is None:
            return value
        if not re.fullmatch(r"-?[0-9]+", value):
            raise ParameterError(f"{name}={value!r}: expected an integer")
        lo = EXPIRES_MIN[family] if name.endswith(".expires") else p.lo
        if (lo is not None and int(value) < lo) or (p.hi is not None and int(value) > p.hi):
            raise ParameterError(f"{name}={value}: out of range {lo}..{p.hi} for firmware family {family}")
    elif p.kind == "bool01":
        if value not in ("0", "1"):
            raise ParameterError(f"{name}={value!r}: expected 0 or 1")
    elif p.kind == "enum":
        if value not in p.choices:
            raise ParameterError(f"{name}={value!r}: expected one of {', '.join(p.choices)}")
    elif p.kind == "host":
        if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", value):
            raise ParameterError(f"{name}={value!r}: expected an IP address or host name")
    return value


def render_master(mac: str, config_files: list[str], app_file: str = "sip.ld") -> str:
    listed = ", ".join(config_files)
    if len(listed) > 2047:
        raise ParameterError("CONFIG_FILES longer than 2047 characters")
    return (f'<?xml version="1.0" standalone="yes"?>\n<APPLICATION APP_FILE_PATH={quoteattr(app_file)} '
            f'CONFIG_FILES={quoteattr(listed)} MISC_FILES="" LOG_FILE_DIRECTORY="" OVERRIDES_DIRECTORY=""/>\n')


def render_config(params: dict[str, str]) -> str:
    """One XML file; elements group parameters by their first name component, as Polycom's templates do."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for k in sorted(params):
        groups.setdefault(k.split(".")[0], []).append((k, params[k]))
    body = []
    for group, items in groups.items():
        attrs = "\n    ".join(f"{k}={quoteattr(v)}" for k, v in items)
        body.append(f"  <{group}\n    {attrs}/>")
    return '<?xml version="1.0" standalone="yes"?>\n<polycomConfig>\n' + "\n".join(body) + "\n</polycomConfig>\n"


def render_phone_files(mac: str, params: dict[str, str]) -> dict[str, bytes]:
    """All files of one phone: `<MAC>.cfg` and `<MAC>-fleet.cfg` (everything in one per-phone file)."""
    name = f"{mac}-fleet.cfg"
    return {f"{mac}.cfg": render_master(mac, [name]).encode(), name: render_config(params).encode()}
