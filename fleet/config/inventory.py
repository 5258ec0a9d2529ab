"""The inventory: sites, phones, routers, boot servers, and credentials references.

Plain validated data (labgrid's "resources"): drivers receive these objects and
the secrets resolved for them, never the other way round. Parameters layer
fleet -> site -> phone; a value `secret:NAME` is resolved from the secrets file
(or `env:VAR` from the environment) only when a driver needs it, so the
inventory itself can be logged and stored without leaking anything.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from soundpoint import bootfiles, catalogue, families, values
from soundpoint.strict import Strict
from soundpoint.yamlfile import FieldError, FileError, error_at, load_model, read_mapping, remember_source, source_of

from fleet.phoneconf import firmware
from fleet.phoneconf import secrets as secret_params
from fleet.config import platforms, source_kinds, switch_drivers, validate
from fleet.config import router_identity
from fleet.config.settings import ENV_SECRETS_FILE

MAC_RE = values.MAC_RE
CREDENTIALS_RE = r"^(env:)?[A-Za-z0-9_.-]{1,128}$"
HttpAuth = Literal["digest", "basic"]
RebootMethod = Literal["check-sync", "web", "rest"]


def _secrets_placed(params: dict[str, str | int]) -> dict[str, str | int]:
    """`secret:`/`env:` only in secret parameters, and secret parameters only by reference (fleet.phoneconf.secrets)."""
    secret_params.validate_field(params)
    return params


STATE_POLLING_MODE = ("apps.statePolling.URL", "apps.statePolling.responseMode")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]", "*")


def push_state_default(site: "Site", phone: "Phone", params: dict[str, str]) -> dict[str, str]:
    """Push mode to the site's collector (`apps.statePolling.URL` = http://EVENTS/state, responseMode 1), for a phone
    whose call checks use state polling (SIP 3.x, UC Software 4.0, UC Software 5.0-5.3 by its `firmware_version`:
    fleet.phoneconf.firmware.uses_state_polling) when no layer sets either parameter: with neither, the phone sends
    its state nowhere (SIP 3.1 developer's guide p. 2-32) and every call check would defer it. Only where the
    collector's events address names a host the phone can reach (a wildcard bind does not); a site that chooses
    requestor mode (responseMode 0) or its own URL keeps it. {} when nothing is to be added."""
    if not firmware.uses_state_polling(phone.family, phone.firmware_version):
        return {}
    if any(str(params.get(name, "") or "").strip() for name in STATE_POLLING_MODE):
        return {}
    if site.collector.events.rpartition(":")[0] in WILDCARD_HOSTS:
        return {}
    return {"apps.statePolling.URL": f"http://{site.collector.events}/state", "apps.statePolling.responseMode": "1"}


# Fields the fleet, its sites and its phones share, with their checks: parameters (text or integers; secrets only
# by reference, and only in secret parameters) and a firmware family's name (normalised: `SIP-3.x` is `sip-3.x`).
Params = Annotated[dict[str, str | int], BeforeValidator(catalogue.param_types), AfterValidator(_secrets_placed)]
FamilyName = Annotated[str, AfterValidator(lambda v: families.get(v).name)]


def _firmware_version(v: str) -> str:
    """A firmware version as Polycom numbers it ("5.8.0", "5.9.7.3480"): two to four dot-separated numbers."""
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,6}){1,3}", v):
        raise ValueError(f"firmware_version {v[:40]!r}: expected a version such as 5.8.0 (two to four numbers "
                         "separated by dots), quoted in YAML")
    return v


FirmwareVersion = Annotated[str, AfterValidator(_firmware_version)]
# the major.minor a family's versions start with (soundpoint.families names)
_FAMILY_VERSIONS = {"sip-2.x": ("2",), "sip-3.x": ("3",), "uc-4.0": ("4.0",), "uc-5.x": ("5",)}


def _hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """host:port; the port is required (default_port is kept for old callers and ignored)."""
    return values.hostport(value)


def _check_params(params: dict, family: str) -> None:
    for name, value in params.items():
        try:
            validate.param(name, value, family)
        except ValueError as exc:
            raise FieldError(("params", name), str(exc)) from None


def _check_shared_params(params: dict, used: set[str]) -> None:
    """A fleet or site parameter reaches phones of several families: each family that knows it must accept the
    value, and at least one must know it (a phone ignores a parameter its firmware does not have)."""
    for name, value in params.items():
        knowing = sorted(f for f in used if families.get(f).lookup(name) is not None) or sorted(used)
        for fam in knowing:
            try:
                validate.param(name, value, fam)
            except ValueError as exc:
                raise FieldError(("params", name), str(exc)) from None


def _implicit_family(model) -> str:
    """No level names a family: sip-3.x (the tool's first default) where the model runs it, else the newest it runs."""
    try:
        can = families.families_for(validate.phone_model(model))
    except (ValueError, TypeError):
        return "sip-3.x"
    return "sip-3.x" if any(f.name == "sip-3.x" for f in can) else (can[-1].name if can else "sip-3.x")


def _check_family(phone: dict, loc: tuple, own: bool, default_from: str) -> None:
    """FieldError when the phone's model cannot run its family, or its reboot method does not exist there."""
    try:
        fam = families.get(phone["firmware_family"])
        model = validate.phone_model(phone.get("model"))
    except (ValueError, TypeError):
        return          # reported by the field validators, with their own words
    try:
        families.check_model(model, fam)
    except families.FamilyError as exc:
        where = "" if own else f" (the {default_from}'s firmware_family)"
        raise FieldError(loc + (("firmware_family",) if own else ("model",)), f"{exc}{where}") from None
    reboot = phone.get("reboot")
    if isinstance(reboot, str) and reboot in families.REBOOT_METHODS and reboot not in fam.reboot_methods:
        raise FieldError(loc + ("reboot",), f"reboot {reboot} is not available on {fam.name}; "
                                            f"it offers {', '.join(fam.reboot_methods)}")


def _networks(values: list[str]) -> list[str]:
    """An `allow_from` list: each an address or a network in CIDR form (host bits allowed: 10.1.20.5/24)."""
    for net in values:
        try:
            ipaddress.ip_network(str(net).strip(), strict=False)
        except ValueError:
            raise ValueError(f"{net!r} is not an address or network (e.g. 10.1.20.7 or 10.1.20.0/24)") from None
    return [str(net).strip() for net in values]


def _fits(version: object, family: object) -> bool:
    """Whether a firmware version can belong to a family (5.8.0 to uc-5.x); True when either is unknown."""
    starts = _FAMILY_VERSIONS.get(family, ()) if isinstance(family, str) else ()
    return not starts or not isinstance(version, str) or any(version == p or version.startswith(p + ".")
                                                                  for p in starts)


def _layer_version(data: dict, site: dict, i: int) -> dict:
    """A site's or the fleet's `firmware_version` goes to each phone of the site whose family can run it (a mixed
    site's SoundPoints keep none); one that fits none of the site's phones is an error at the line that set it."""
    own = site.get("firmware_version")
    default = own or data.get("firmware_version")
    if not default:
        return site
    fam_default = site.get("firmware_family") or data.get("firmware_family")
    phones, fitted = [], 0
    for p in site["phones"]:
        if isinstance(p, dict) and "firmware_version" not in p and _fits(default, p.get("firmware_family") or fam_default):
            p, fitted = {"firmware_version": default, **p}, fitted + 1
        phones.append(p)
    if not fitted and any(isinstance(p, dict) and "firmware_version" not in p for p in site["phones"]):
        raise FieldError(("sites", i, "firmware_version") if own else ("firmware_version",),
                         f"firmware_version {str(default)[:40]} fits no phone of site {site.get('name', i)} "
                         f"(their families: {fam_default or 'per model'})")
    return {**site, "phones": phones}


POE_PORT_RE = re.compile(r"^([1-9][0-9]{0,5})\.([1-9][0-9]{0,5})$")


class PoePort(Strict):
    """Where a phone takes its power: a switch of its site (`switches[].name`) and the PSE port as RFC 3621
    indexes it, `GROUP.PORT` (pethPsePortGroupIndex.pethPsePortIndex; group 1 on a switch that is not modular)."""
    switch: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$", description="a name in the site's `switches`")
    port: str = Field(description="GROUP.PORT, quoted in YAML (\"1.12\"): pethPsePortGroupIndex.pethPsePortIndex")

    @field_validator("port", mode="before")
    @classmethod
    def group_dot_port(cls, v):
        if isinstance(v, float) or isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"poe port {v!r} must be quoted text such as \"1.12\" (YAML reads 1.10 as the number 1.1)")
        if not isinstance(v, str) or not POE_PORT_RE.match(v):
            raise ValueError(f"poe port {str(v)[:40]!r} is not GROUP.PORT (e.g. \"1.12\": group 1, port 12; both from 1)")
        return v

    @property
    def index(self) -> tuple[int, int]:
        """(group, port), the row's index in pethPsePortTable."""
        group, port = self.port.split(".")
        return int(group), int(port)


class Phone(Strict):
    mac: str
    model: validate.PhoneModel
    address: values.Host("phone address")
    http_port: int = Field(80, ge=1, le=65535)
    sip_port: int = Field(5060, ge=1, le=65535)
    credentials: str = Field(pattern=CREDENTIALS_RE, description="name of the secret holding the admin username/password")
    http_auth: HttpAuth | None = Field(None, description="unset: digest, except REST (UC Software 5), which sends "
                                       "Basic as Poly documents it and answers a digest challenge; digest: never "
                                       "Basic; basic: only Basic (the password in clear); site and fleet may set "
                                       "the default")
    firmware_version: FirmwareVersion | None = Field(None, description="the firmware version the phone runs (e.g. "
                                                     "\"5.8.0\"): which endpoints and answer shapes to expect; "
                                                     "controls read it from the phone and report a mismatch")
    params: Params = {}
    # filled from the site's or the fleet's default when the inventory is read (Inventory.family_defaults)
    firmware_family: FamilyName | None = Field(None, description="overrides the site's default for this phone")
    reboot: RebootMethod | None = Field(None, description="how fleet reboots it; default per family")
    allow_from: list[str] = Field([], description="addresses or networks (CIDR) besides its own address whose SIP "
                                                  "on the wire counts as this phone's (the NAT in front of it)")
    poe: PoePort | None = Field(None, description="the switch port that powers it (power cycling: a rollout's "
                                                  "power_cycle_fallback, an experiment's power step)")

    @field_validator("allow_from")
    @classmethod
    def allowed_networks(cls, v: list[str]) -> list[str]:
        return _networks(v)

    @model_validator(mode="after")
    def version_in_family(self) -> "Phone":
        """A firmware_version its family cannot have (5.8.0 on sip-3.x) is a typo in one of them."""
        if self.firmware_version and self.firmware_family:
            starts = _FAMILY_VERSIONS.get(self.firmware_family, ())
            if starts and not any(self.firmware_version == s or self.firmware_version.startswith(s + ".")
                                  for s in starts):
                raise FieldError(("firmware_version",), f"firmware_version {self.firmware_version} is not a "
                                 f"{self.firmware_family} version (those start with {' or '.join(starts)}.)")
        return self

    @property
    def family(self) -> families.Family:
        """The phone's firmware profile (the newest family its model runs, for a phone built outside an inventory)."""
        if self.firmware_family is not None:
            return families.get(self.firmware_family)
        return (families.families_for(self.model) or [families.get("sip-3.x")])[-1]

    @property
    def reboot_method(self) -> str:
        return self.reboot or self.family.default_reboot

    @field_validator("mac", mode="before")
    @classmethod
    def normal_mac(cls, v) -> str:
        return values.mac(v)



# Directories every user of a router may write to (or that the system owns for everyone): never an outage directory.
SHARED_DIRS = frozenset({"/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run", "/run/lock", "/var/lock", "/run/shm"})


class Router(Strict):
    driver: str = Field(description="a router platform registered in fleet.config.platforms")
    address: values.Host("router address")
    port: int = Field(22, ge=1, le=65535)
    credentials: str = Field(pattern=CREDENTIALS_RE)
    wan_interface: str = Field(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$",
                               description="the WAN interface: its Linux name (linux_ssh) or its ifDescr (snmp, "
                                           "e.g. GigabitEthernet0/0/1)")
    known_hosts: str | None = Field(None, min_length=1, max_length=4096)
    accept_new_host_key: bool = False
    dns_port: int = Field(53, ge=1, le=65535)
    timeout: float = Field(10.0, gt=0, le=600)
    snmp_version: Literal["2c", "3"] = "3"
    allow_without_deadman: bool = Field(False, description="SNMP cannot schedule a restore on the router; "
                                                           "only the controller restores then")
    state_dir: str | None = Field(None, pattern=r"^/[A-Za-z0-9_./-]{1,200}$",
                                  description="dedicated directory on the router for per-outage state files "
                                              "(default: ~/.fleet-outages of the SSH user); it and every "
                                              "directory above it must be root's or the SSH user's and not "
                                              "writable by others (the router refuses it otherwise)")
    wan_lock_dir: str | None = Field(None, pattern=r"^/[A-Za-z0-9_./-]{1,200}$",
                                     description="where the router keeps its per-WAN outage lock, which every "
                                                 "controller reaching it must share (default: the platform's, "
                                                 "/run/fleet for linux_ssh; leave it unset on real routers). Root's "
                                                 "or the SSH user's, not writable by others; a non-root SSH user "
                                                 "needs it made for them at boot")
    shared_with: list[str] = Field([], description="the other sites behind this same router (same address and "
                                                   "port): each lists the others, an experiment on one leases them "
                                                   "all, and the router allows one outage per WAN interface")

    @field_validator("state_dir", "wan_lock_dir")
    @classmethod
    def a_dedicated_directory(cls, v: str | None) -> str | None:
        """The router checks ownership and modes itself (it alone can see them); what the text alone shows is
        refused here, at load time: `.`/`..` components and the system's shared directories."""
        if v is None:
            return v
        if any(part in (".", "..") for part in v.split("/")):
            raise ValueError(f"{v!r} has a . or .. component; give the directory's real path")
        if v.rstrip("/") in SHARED_DIRS or v == "/":
            raise ValueError(f"{v!r} is a directory shared with other users; give a dedicated one "
                             "(e.g. /var/lib/fleet-outages, /run/fleet)")
        return v

    @model_validator(mode="after")
    def platform_interface_name(self) -> "Router":
        """The WAN interface as the platform names interfaces (linux_ssh: a Linux name, no `/` and at most 15
        characters; snmp: an ifDescr, which may have both)."""
        why = platforms.get(self.driver).check_interface(self.wan_interface)
        if why:
            raise FieldError(("wan_interface",), why)
        return self

    @field_validator("driver")
    @classmethod
    def a_registered_driver(cls, v: str) -> str:
        return platforms.check_driver(v)


class Switch(Strict):
    """A PoE switch of a site, by the name its phones' `poe.switch` give; its driver from
    fleet.config.switch_drivers (snmp-poe: POWER-ETHERNET-MIB pethPsePortAdminEnable over SNMP)."""
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    driver: str = Field("snmp-poe", description="a switch driver registered in fleet.config.switch_drivers")
    address: values.Host("switch address")
    port: int = Field(161, ge=1, le=65535)
    credentials: str = Field(pattern=CREDENTIALS_RE, description="the secret holding the SNMP community (v2c: its "
                                                                 "password) or the v3 user, auth and privacy keys")
    snmp_version: Literal["2c", "3"] = "3"
    timeout: float = Field(5.0, gt=0, le=120)

    @field_validator("driver")
    @classmethod
    def a_registered_driver(cls, v: str) -> str:
        return switch_drivers.check_driver(v)


class BootServer(Strict):
    url: str = Field(pattern=r"^(https?|ftp|sftp|file)://", max_length=2048)
    credentials: str | None = Field(None, pattern=CREDENTIALS_RE)
    master_file: str | None = Field(None, max_length=255, description=(
        "the master file named in the phones' boot-server address (ftp://host/site.cfg: `site.cfg`); the phone "
        "reads it before <MAC>.cfg and 000000000000.cfg, so fleet adds its file there"))

    _master = field_validator("master_file")(classmethod(lambda cls, v: bootfiles.named_master(v)))

    @model_validator(mode="before")
    @classmethod
    def master_named_in_url(cls, data):
        """Split a boot-server address that names its master file (`ftp://host/dir/site.cfg`) as the phone does.

        The phone reads `site.cfg` from the directory `ftp://host/dir/` (SIP 3.1
        admin guide, appendix A); the lab splits the address the same way
        (soundpoint.bootfiles.split_boot_address). Publishers get the directory,
        `master_file` the name; an explicit `master_file` naming another file is
        refused, since the phones read only the one in their address.
        """
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        directory, named = bootfiles.split_boot_address(data["url"])
        if not named:
            return data
        explicit = data.get("master_file")
        if explicit is not None and explicit != named:
            raise FieldError(("master_file",), f"{str(explicit)[:80]!r} conflicts with the url, which names "
                                               f"{named!r} (the master file the phones read)")
        return {**data, "url": directory, "master_file": named}

    @field_validator("url")
    @classmethod
    def a_url(cls, v: str) -> str:
        values.no_control(v, "URL")
        if any(c.isspace() for c in v):
            raise ValueError("URL contains white space")
        parts = urlsplit(v)
        if parts.scheme == "file":
            if not parts.path.startswith("/") or parts.netloc not in ("", "localhost"):
                raise ValueError("a file:// URL names an absolute directory (file:///srv/tftp/)")
            return v
        if not parts.hostname:
            raise ValueError(f"URL {v!r:.80} has no host")
        values.host(parts.hostname.strip("[]"), "boot server host")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"URL {v!r:.80} has a bad port") from None
        return v


class Collector(Strict):
    syslog: str = "0.0.0.0:514"     # a wildcard is refused when the collector starts: name the address phones send to
    events: str = "0.0.0.0:8514"
    poll_interval: float = Field(0.0, ge=0, le=3600, description="seconds between state-polling rounds; 0: push sources only")
    poll_concurrency: int = Field(200, ge=1, le=5000)
    allow_from: list[str] = Field([], description="networks (CIDR) whose syslog, events and SIP on the wire are "
                                                  "accepted as any of the site's phones' besides their own addresses")
    metrics: str | None = Field(None, description="HOST:PORT of the collector's Prometheus /metrics (off when unset); "
                                                  "sites one collector process runs that name one address share it")

    @field_validator("syslog", "events")
    @classmethod
    def hostport(cls, v: str, info) -> str:
        values.hostport(v, f"collector {info.field_name} address")
        return v

    @field_validator("metrics")
    @classmethod
    def metrics_hostport(cls, v: str | None) -> str | None:
        """A named address, like the listeners': /metrics lists every phone of the site, so it is served where the
        inventory says, never on every network the host has."""
        if v is None:
            return v
        host, _ = values.hostport(v, "collector metrics address")
        if host in ("0.0.0.0", "::", "*"):
            raise ValueError(f"collector metrics address {v!r:.60} is a wildcard: name the address Prometheus scrapes")
        return v

    @field_validator("allow_from")
    @classmethod
    def networks(cls, v: list[str]) -> list[str]:
        return _networks(v)


# --- per-server evidence sources of a site: SIP on the wire and the gateway's registrar --------------------

GATEWAY_PLATFORMS = ("kamailio", "asterisk", "freeswitch")
_IFACE = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$"


class Capture(Strict):
    """One wire source, of a kind registered in fleet.config.source_kinds: `router` (tcpdump over the router's
    SSH), `interface` (a local mirror port, needs CAP_NET_RAW) or `hep` (a HEP v3 UDP listener fed by the SIP
    servers in `senders`). Written in the inventory as text (`router lan0`, `interface eth1`,
    `hep 10.1.0.5:9060`: the kind and its one word) or as this mapping."""
    kind: str
    interface: str | None = Field(None, pattern=_IFACE, description="router: its LAN interface (default any); "
                                                                    "interface: the local mirror port")
    platform: str | None = Field(None, description="router: how to run tcpdump there, one of the router "
                                                   "platform's capture flavours (linux_ssh: linux, openwrt, vyos; "
                                                   "default: its first)")
    listen: str | None = Field(None, description="hep: the address the SIP servers send HEP to (host:port)")
    senders: list[str] = Field([], description="hep: IP addresses allowed to send HEP (default: the site's gateway)")
    auth_keys: dict[str, Annotated[str, Field(pattern=CREDENTIALS_RE)]] = Field(
        {}, description="hep: per sender IP address, the name of the secret whose password is its HEP v3 auth key "
                        "(chunk 14, Kamailio siptrace's auth_key); a datagram from that sender without it is dropped")

    @model_validator(mode="before")
    @classmethod
    def from_text(cls, data):
        if not isinstance(data, str):
            return data
        words = data.split()
        kind = source_kinds.KINDS.get(words[0]) if words else None
        if kind is None or not kind.is_capture:
            raise ValueError(f"capture {data!r:.60} is not one of: {source_kinds.capture_forms()}")
        rest = words[1:]
        if kind.word is None and not rest:
            return {"kind": kind.name}
        if kind.word is not None and (len(rest) == 1 or (kind.word_optional and not rest)):
            return {"kind": kind.name, **({kind.word: rest[0]} if rest else {})}
        raise ValueError(f"capture {data!r:.60}: expected {source_kinds.capture_forms()}")

    @field_validator("kind")
    @classmethod
    def a_registered_kind(cls, v: str) -> str:
        if not source_kinds.get(v).is_capture:
            raise ValueError(f"{v!r} is not a capture; expected {source_kinds.capture_forms()}")
        return v

    @field_validator("platform")
    @classmethod
    def a_capture_flavour(cls, v: str | None) -> str | None:
        """One some router platform has (which one the site's router has is checked with the site)."""
        if v is not None and v not in platforms.capture_flavours():
            raise ValueError(f"capture platform {v!r:.40} is not one of {', '.join(platforms.capture_flavours())}")
        return v

    @field_validator("listen")
    @classmethod
    def listen_hostport(cls, v: str | None) -> str | None:
        if v is not None:
            host, _ = values.hostport(v, "HEP listen address")
            if host in ("0.0.0.0", "::", "*"):
                raise ValueError("HEP listen address: name the address the SIP servers send to, not a wildcard")
        return v

    @field_validator("senders")
    @classmethod
    def ip_senders(cls, v: list[str]) -> list[str]:
        for a in v:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ValueError(f"HEP sender {a!r:.60} is not an IP address") from None
        return v

    @field_validator("auth_keys")
    @classmethod
    def ip_auth_keys(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for a, name in v.items():
            try:
                out[str(ipaddress.ip_address(a))] = name
            except ValueError:
                raise ValueError(f"HEP auth key sender {a!r:.60} is not an IP address") from None
        return out

    @model_validator(mode="after")
    def complete(self) -> "Capture":
        """What the kind needs is there, and nothing another kind owns (source_kinds.SourceKind.needs, owns)."""
        kind = source_kinds.get(self.kind)
        for name in kind.needs:
            if not getattr(self, name):
                raise ValueError(f"capture {kind.name} needs its {name} ({kind.text_form or kind.name})")
        for other in source_kinds.capture_kinds():
            if other.name != kind.name and any(getattr(self, f) and f not in kind.takes for f in other.owns):
                owned = " and ".join(filter(None, (", ".join(other.owns[:-1]), other.owns[-1])))
                raise ValueError(f"{owned} belong to a {other.name} capture, not to {kind.name}")
        if self.senders and not set(self.auth_keys) <= {str(ipaddress.ip_address(a)) for a in self.senders}:
            raise ValueError(f"auth_keys names {sorted(set(self.auth_keys) - set(self.senders))[0]}, "
                             "which is not one of the HEP senders")
        return self


class GatewayRegistrar(Strict):
    """The site gateway's registrar, polled for its bindings over SSH (the router's, by default: the gateway
    is often the router itself)."""
    platform: Literal["kamailio", "asterisk", "freeswitch"]
    interval: float = Field(10.0, ge=1, le=3600, description="seconds between polls")
    server: int | None = Field(None, ge=1, le=9, description="which server of each phone the gateway is "
                                                             "(default: the one whose address is the gateway's)")


class Site(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    gateway: values.Host("gateway address")
    dns: str | None = None
    timezone: validate.Timezone = "UTC"
    collector: Collector = Collector()
    boot_server: BootServer
    router: Router | None = None
    http_auth: HttpAuth | None = Field(None, description="default for this site's phones")
    firmware_version: FirmwareVersion | None = Field(None, description="default for this site's phones")
    firmware_family: FamilyName | None = Field(None, description="default for this site's phones")
    params: Params = {}
    switches: list[Switch] = Field([], description="PoE switches powering the site's phones (phones name theirs in "
                                                  "`poe: {switch, port}`)")
    phones: list[Phone] = []

    @field_validator("dns")
    @classmethod
    def dns_hostport(cls, v: str | None) -> str | None:
        if v is not None:
            values.hostport(v, "DNS server address")
        return v

    # --- evidence sources (issue 10) ---
    capture: list[Capture] = Field([], description="wire sources: one or a list of a kind registered in "
                                                   "fleet.config.source_kinds (router [IFACE] | interface NAME | "
                                                   "hep HOST:PORT)")
    gateway_registrar: GatewayRegistrar | None = Field(None, description="written `gateway: {address, platform}`")

    @model_validator(mode="before")
    @classmethod
    def gateway_mapping(cls, data):
        """`gateway: ADDRESS` or `gateway: {address: ADDRESS, platform: kamailio, interval: 10}`; `capture` one or a list."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        gw = data.get("gateway")
        if isinstance(gw, dict):
            if "gateway_registrar" in data:
                raise ValueError("give the gateway's registrar inside `gateway`, not as gateway_registrar as well")
            if "address" not in gw:
                raise FieldError(("gateway", "address"), "the gateway's address is required (gateway: {address: "
                                                         "10.1.0.1, platform: kamailio})")
            for key in gw:
                if key not in ("address", *GatewayRegistrar.model_fields):
                    raise FieldError(("gateway", key), f"unknown field; known: address, "
                                                       f"{', '.join(GatewayRegistrar.model_fields)}")
            if "platform" in gw and gw["platform"] not in GATEWAY_PLATFORMS:
                raise FieldError(("gateway", "platform"), f"gateway platform {gw['platform']!r:.40} is not one of "
                                                          f"{', '.join(GATEWAY_PLATFORMS)}")
            data["gateway"] = gw["address"]
            rest = {k: v for k, v in gw.items() if k != "address"}
            if rest:
                data["gateway_registrar"] = rest
        if isinstance(data.get("capture"), (str, dict)):
            data["capture"] = [data["capture"]]
        return data

    @model_validator(mode="after")
    def poe_ports_known(self) -> "Site":
        """Switch names once each; a phone's `poe.switch` names one of them; one port powers one phone."""
        names: dict[str, int] = {}
        for i, sw in enumerate(self.switches):
            if sw.name in names:
                raise FieldError(("switches", i, "name"), f"switch {sw.name} is listed twice (also switches[{names[sw.name]}])")
            names[sw.name] = i
        ports: dict[tuple[str, tuple[int, int]], int] = {}
        for j, p in enumerate(self.phones):
            if p.poe is None:
                continue
            if p.poe.switch not in names:
                raise FieldError(("phones", j, "poe", "switch"),
                                 f"no switch {p.poe.switch!r} in site {self.name}'s switches"
                                 + (values.did_you_mean(p.poe.switch, list(names)) if names else
                                    " (the site lists none: add `switches: [{name, address, credentials}]`)"))
            first = ports.setdefault((p.poe.switch, p.poe.index), j)
            if first != j:
                raise FieldError(("phones", j, "poe", "port"), f"port {p.poe.port} of switch {p.poe.switch} already "
                                                               f"powers phones[{first}] ({self.phones[first].mac})")
        return self

    def switch(self, name: str) -> Switch:
        for sw in self.switches:
            if sw.name == name:
                return sw
        raise KeyError(f"no switch {name!r} at site {self.name}")

    @model_validator(mode="after")
    def sources_reachable(self) -> "Site":
        """A source that runs over the router's SSH (a router capture, gateway polling: source_kinds) needs a
        router whose platform speaks it; a router capture's `platform` must be one its router platform has."""
        platform = platforms.get(self.router.driver) if self.router is not None else None
        ssh = platform is not None and platform.ssh
        need = f"a router with driver {' or '.join(platforms.ssh_drivers()) or 'that speaks SSH'}"
        for i, c in enumerate(self.capture):
            if source_kinds.get(c.kind).router_ssh and not ssh:
                raise FieldError(("capture", i), f"a {c.kind} capture runs over the router's SSH: the site needs "
                                                 f"{need}")
            if "platform" in source_kinds.get(c.kind).takes and platform is not None:    # how it runs tcpdump there
                try:
                    platform.capture_template(c.platform)
                except ValueError as exc:
                    raise FieldError(("capture", i, "platform"), str(exc)) from None
        if self.gateway_registrar is not None and source_kinds.get(source_kinds.GATEWAY).router_ssh and not ssh:
            raise FieldError(("gateway", "platform"), "the gateway's bindings are polled over the router's SSH: the "
                                                      f"site needs {need}")
        return self


class Provider(Strict):
    name: values.Host("provider name")
    port: int = Field(5060, ge=1, le=65535)


class Inventory(Strict):
    name: str = Field(min_length=1, max_length=200)
    firmware_family: FamilyName | None = Field(None, description="default for every phone (sites and phones may override); "
                                                          "unset everywhere: sip-3.x, or the newest family the model runs")
    secrets_file: str | None = Field(None, min_length=1, max_length=4096)
    provider: Provider | None = None
    _by_mac: dict | None = PrivateAttr(default=None)      # phone(): mac -> (site, phone), built on first use
    http_auth: HttpAuth | None = Field(None, description="default for every phone")
    firmware_version: FirmwareVersion | None = Field(None, description="default for every phone")
    params: Params = {}
    registrar_limits: dict[str, float] = Field({}, description="REGISTER/s each server address may receive (R6)")
    sites: list[Site] = Field(min_length=1)
    source: str = Field("", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def http_auth_defaults(cls, data):
        """Layer `http_auth` and `firmware_version` fleet -> site -> phone by filling each phone's own field from
        the nearest default."""
        if not isinstance(data, dict) or not isinstance(data.get("sites"), list):
            return data
        sites = []
        for i, site in enumerate(data["sites"]):
            default = site.get("http_auth") or data.get("http_auth") if isinstance(site, dict) else None
            if default and isinstance(site.get("phones"), list):
                site = {**site, "phones": [{"http_auth": default, **p} if isinstance(p, dict) else p
                                           for p in site["phones"]]}
            if isinstance(site, dict) and isinstance(site.get("phones"), list):
                site = _layer_version(data, site, i)
            sites.append(site)
        return {**data, "sites": sites}

    @model_validator(mode="before")
    @classmethod
    def family_defaults(cls, data):
        """Give each phone its firmware family (phone -> site -> fleet) and refuse a model/family that cannot exist.

        Done on the raw document so the error names the line that chose the family: the phone's own
        `firmware_family`, else its `model` (the family came from a default). Malformed parts are left to
        the field validators.
        """
        if not isinstance(data, dict) or not isinstance(data.get("sites"), list):
            return data
        fleet_default = data.get("firmware_family")
        sites = []
        for i, site in enumerate(data["sites"]):
            if not isinstance(site, dict) or not isinstance(site.get("phones"), list):
                sites.append(site)
                continue
            default = site.get("firmware_family") or fleet_default
            phones = []
            for j, phone in enumerate(site["phones"]):
                if not isinstance(phone, dict):
                    phones.append(phone)
                    continue
                own = bool(phone.get("firmware_family"))
                chosen = phone.get("firmware_family") or default
                if chosen in families.NAMES or not chosen:
                    phone = {**phone, "firmware_family": chosen or _implicit_family(phone.get("model"))}
                    _check_family(phone, ("sites", i, "phones", j), own,
                                  "site" if site.get("firmware_family") else "fleet")
                phones.append(phone)
            sites.append({**site, "phones": phones})
        return {**data, "sites": sites}

    @field_validator("name")
    @classmethod
    def printable(cls, v: str) -> str:
        return values.no_control(v, "name")

    @field_validator("registrar_limits")
    @classmethod
    def limits(cls, v: dict[str, float]) -> dict[str, float]:
        for addr, limit in v.items():
            try:
                values.host(addr, "server address")
            except ValueError as exc:
                raise FieldError((addr,), str(exc)) from None
            if not limit > 0:
                raise FieldError((addr,), "a limit is a positive number of REGISTER per second")
        return v

    @model_validator(mode="after")
    def unique(self) -> "Inventory":
        """Names and MACs once each; parameters known to the catalogue. Linear: 50,000 phones check in a blink."""
        used = {p.family.name for s in self.sites for p in s.phones} or {self.firmware_family or "sip-3.x"}
        _check_shared_params(self.params, used)
        sites: dict[str, int] = {}
        macs: dict[str, tuple[int, int]] = {}
        for i, s in enumerate(self.sites):
            if s.name in sites:
                raise FieldError(("sites", i, "name"), f"site {s.name} is listed twice (also sites[{sites[s.name]}])")
            sites[s.name] = i
            try:
                _check_shared_params(s.params, {p.family.name for p in s.phones}
                                     or {s.firmware_family or self.firmware_family or "sip-3.x"})
            except FieldError as exc:
                raise FieldError(("sites", i) + exc.loc, str(exc)) from None
            for j, p in enumerate(s.phones):
                first = macs.setdefault(p.mac, (i, j))
                if first != (i, j):
                    raise FieldError(("sites", i, "phones", j, "mac"),
                                     f"MAC address listed twice: {p.mac} (also sites[{first[0]}].phones[{first[1]}])")
                if p.params:
                    try:
                        _check_params(p.params, p.family.name)
                    except FieldError as exc:
                        raise FieldError(("sites", i, "phones", j) + exc.loc, str(exc)) from None
        return self

    @model_validator(mode="after")
    def routers_shared_openly(self) -> "Inventory":
        """One router in two sites is one WAN for both: an outage made for one cuts the other, and leases are per
        site. It is allowed only when every site behind it says so (router.shared_with names the others) and
        reaches it the same way (driver, credentials, state_dir, wan_lock_dir). One router is one port of one
        host however it is written: IP addresses compare in canonical form and host names by spelling and by what
        the controller's resolver gives for them (fleet.config.router_identity), so a name and an IP are not two routers."""
        routed = [(i, s.router) for i, s in enumerate(self.sites) if s.router is not None]
        names = {s.name for s in self.sites}
        for i, r in routed:
            for other in r.shared_with:
                if other not in names or other == self.sites[i].name:
                    raise FieldError(("sites", i, "router", "shared_with"),
                                     f"{other!r} is not another site of this inventory")
        ids = router_identity.identities(r.address for _, r in routed) if len(routed) > 1 else {}
        # sites whose routers share a token (and the port) are behind one router: union-find over the tokens
        parent = list(range(len(routed)))

        def root(k: int) -> int:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        first_with: dict[tuple[str, int], int] = {}
        for k, (_, r) in enumerate(routed):
            for token in ids.get(r.address, frozenset({r.address.lower()})):
                j = first_with.setdefault((token, r.port), k)
                parent[root(k)] = root(j)
        behind: dict[int, list[int]] = {}
        for k, (i, _) in enumerate(routed):
            behind.setdefault(root(k), []).append(i)
        for idx in behind.values():
            for i in idx:
                r = self.sites[i].router
                assert r is not None
                address, port = r.address, r.port
                others = [self.sites[j] for j in idx if j != i]
                for o in others:
                    j = self.sites.index(o)
                    assert o.router is not None
                    seen_as = "" if o.router.address == address else f", as {o.router.address}"
                    if o.name not in r.shared_with:
                        raise FieldError(("sites", i, "router", "address"),
                                         f"router {address}:{port} is also the router of site {o.name} "
                                         f"(sites[{j}]{seen_as}): an outage for one cuts both; list each other in "
                                         "router.shared_with, or give each site its own router")
                    for attr in ("driver", "credentials", "state_dir", "wan_lock_dir"):
                        if getattr(o.router, attr) != getattr(r, attr):
                            raise FieldError(("sites", i, "router", attr),
                                             f"site {o.name} (sites[{j}]) shares this router with another {attr} "
                                             f"({getattr(o.router, attr)!r}); sites sharing a router reach it "
                                             "the same way")
                unknown = set(r.shared_with) - {o.name for o in others}
                if unknown:
                    raise FieldError(("sites", i, "router", "shared_with"),
                                     f"{', '.join(sorted(unknown))} do not have this router ({address}:{port})")
        return self

    # ----------------------------------------------------------- lookups
    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site {name!r} in inventory {self.name}")

    def phone(self, mac: str) -> tuple[Site, Phone]:
        """The site and entry of a phone, from an index built on first use (callers ask once per phone of a
        fleet: a scan of every site each time made that quadratic)."""
        mac = mac.lower()
        if self._by_mac is None:
            self._by_mac = {p.mac: (s, p) for s in self.sites for p in s.phones}
        try:
            return self._by_mac[mac]
        except KeyError:
            raise KeyError(f"no phone {mac} in inventory {self.name}") from None

    def effective_params(self, site: Site, phone: Phone) -> dict[str, str]:
        """fleet -> site -> phone; the phone's own value wins. A state-polling phone whose state goes nowhere pushes
        it to the site's collector by default (`push_state_default`)."""
        merged: dict[str, str] = {}
        for layer in (self.params, site.params, phone.params):
            merged.update({k: str(v) for k, v in layer.items()})
        merged.update(push_state_default(site, phone, merged))
        return merged

    def credential_refs(self) -> list[tuple[tuple, str]]:
        """Every secret name the inventory refers to, with where (for checking them against the secrets file)."""
        refs: list[tuple[tuple, str]] = []
        for i, s in enumerate(self.sites):
            if s.boot_server.credentials:
                refs.append((("sites", i, "boot_server", "credentials"), s.boot_server.credentials))
            if s.router:
                refs.append((("sites", i, "router", "credentials"), s.router.credentials))
            refs += [(("sites", i, "switches", k, "credentials"), sw.credentials) for k, sw in enumerate(s.switches)]
            for k, c in enumerate(s.capture):
                refs += [(("sites", i, "capture", k, "auth_keys", ip), name) for ip, name in c.auth_keys.items()]
            for j, p in enumerate(s.phones):
                refs.append((("sites", i, "phones", j, "credentials"), p.credentials))
                refs += [(("sites", i, "phones", j, "params", k), v[7:]) for k, v in p.params.items()
                         if isinstance(v, str) and v.startswith("secret:")]
            refs += [(("sites", i, "params", k), v[7:]) for k, v in s.params.items()
                     if isinstance(v, str) and v.startswith("secret:")]
        refs += [(("params", k), v[7:]) for k, v in self.params.items() if isinstance(v, str) and v.startswith("secret:")]
        return refs


@dataclass(frozen=True)
class Credentials:
    """Resolved secret; repr never shows the values, so it cannot leak into logs or tracebacks."""
    username: str = ""
    password: str = ""
    key_file: str = ""
    priv_password: str = ""     # SNMPv3 privacy key; for v2c the community is `password`

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***, key_file={'set' if self.key_file else 'unset'})"

    __str__ = __repr__


SECRET_FIELDS = ("username", "password", "key_file", "priv_password")


def secrets_path(inventory: Inventory) -> Path | None:
    if not inventory.secrets_file:
        return None
    path = Path(inventory.secrets_file)
    if not path.is_absolute() and inventory.source:
        path = Path(inventory.source).parent / path
    return path


def read_secrets(path: str | Path) -> dict[str, dict[str, str]]:
    """The secrets file: a mapping of names to {username, password, key_file, priv_password}, all text.

    Errors name the file, line and secret name but never a value, and the YAML parser's own
    description is left out (it may quote the line). Numbers are refused rather than converted:
    `password: 0123` would otherwise become 83.
    """
    try:
        data, node = read_mapping(path, quiet=True)
    except FileError as exc:
        if exc.message == "file not found":
            raise FileError(path, None, "", "secrets file not found") from None
        raise
    if not data:
        return {}
    for name, entry in data.items():
        loc = (name,)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name):
            raise error_at(path, node, (), f"secret names are letters, digits, _ . - (found a {type(name).__name__} key)")
        if not isinstance(entry, dict):
            raise error_at(path, node, loc, f"each secret is a mapping of {', '.join(SECRET_FIELDS)}; "
                                            f"found {type(entry).__name__}")
        for field, value in entry.items():
            if field not in SECRET_FIELDS:
                raise error_at(path, node, loc + (str(field),), f"unknown field; known: {', '.join(SECRET_FIELDS)}")
            if not isinstance(value, str):
                raise error_at(path, node, loc + (field,), f"must be text (quote it); found {type(value).__name__}")
    return data


def check_secrets(inventory: Inventory) -> "Secrets":
    """The secrets file the inventory names exists, is well formed, and holds every secret the inventory names."""
    path = secrets_path(inventory)
    if path is not None and not path.exists():
        raise source_of(inventory, inventory.source).error(("secrets_file",), f"secrets file {path} not found")
    secrets = Secrets(inventory)
    secrets.check_refs(inventory)
    return secrets


def secret_suggestions(loc: tuple, refs: list[tuple[tuple, str]], data: dict) -> list[str]:
    """The secrets a misspelt reference at `loc` may have meant: only those no other reference uses (a used one is
    someone else's: another user's SIP password, another device's login) and of the same kind (a phone parameter
    names a password, never a login with a username). Naming another user's secret would invite pasting it in."""
    used = {name for _, name in refs}
    param = "params" in loc
    return [n for n, entry in data.items() if n not in used and isinstance(entry, dict)
            and not (param and (entry.get("username") or entry.get("key_file")))]


class Secrets:
    def __init__(self, inventory: Inventory) -> None:
        self._data: dict = {}
        # Logins of the infrastructure (routers, boot servers) never go into a phone parameter: a plan forged
        # in Redis could otherwise publish the router's password to a boot server.
        self._device_logins = {c for site in inventory.sites for c in
                               [site.router.credentials if site.router else None, site.boot_server.credentials,
                                *(sw.credentials for sw in site.switches)] if c}
        path = secrets_path(inventory)
        if path is not None:
            self._data = read_secrets(path)

    def check_refs(self, inventory: Inventory) -> None:
        """Every secret the inventory names is in the secrets file (env: references are resolved at use)."""
        src = source_of(inventory, inventory.source)
        refs = inventory.credential_refs()
        for loc, name in refs:
            if name.startswith("env:"):
                continue
            if not isinstance(self._data.get(name), dict):
                raise src.error(loc, f"no secret {name!r} in the secrets file {secrets_path(inventory) or '(none named)'}"
                                     + values.did_you_mean(name, secret_suggestions(loc, refs, self._data)))

    def credentials(self, name: str) -> Credentials:
        if name.startswith("env:"):
            var = name[4:]
            if var not in os.environ:
                raise KeyError(f"credentials {name}: environment variable {var} is not set")
            return Credentials(password=os.environ[var])
        entry = self._data.get(name)
        if not isinstance(entry, dict):
            raise KeyError(f"credentials {name!r} not found in the secrets file")
        return Credentials(username=str(entry.get("username", "")), password=str(entry.get("password", "")),
                           key_file=str(entry.get("key_file", "")), priv_password=str(entry.get("priv_password", "")))

    def resolve_param(self, name: str, value: str) -> str:
        """The value of parameter `name` to render; a reference resolves only in a parameter the catalogue marks secret."""
        if not secret_params.is_ref(value):
            return value
        if not secret_params.is_secret(name):
            raise secret_params.SecretPlacementError(
                f"{name}: refusing to resolve a secret reference into a non-secret parameter")
        ref = value[7:] if value.startswith("secret:") else value
        if ref in self._device_logins:
            raise secret_params.SecretPlacementError(
                f"{name}: refusing to put the login of a router or boot server (credentials {ref!r}) into a phone parameter")
        if ref.startswith("env:FLEET_"):
            raise secret_params.SecretPlacementError(f"{name}: refusing to put fleet's own settings ({ref}) into a phone parameter")
        return self.credentials(ref).password


def load(path: str | Path, keep_source: bool = False) -> Inventory:
    """keep_source: remember line numbers for later cross-checks (the CLI; not the workers, which only read).

    With FLEET_SECRETS_FILE set, that file replaces the `secrets_file` the inventory names, for every process
    that loads it (the CLI, the rollout driver, a worker's tasks): fleet.config.settings sets it."""
    inv = load_model(path, Inventory, keep_source=keep_source)
    update = {"source": str(Path(path).resolve())}
    if os.environ.get(ENV_SECRETS_FILE):
        update["secrets_file"] = str(Path(os.environ[ENV_SECRETS_FILE]).resolve())
    out = inv.model_copy(update=update)
    if keep_source:
        remember_source(out, source_of(inv))
    return out
