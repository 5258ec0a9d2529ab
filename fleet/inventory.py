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
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from soundpoint.yamlfile import FieldError, FileError, error_at, load_model, read_mapping, remember_source, source_of

from . import secret_params, validate

MAC_RE = validate.MAC_RE
CREDENTIALS_RE = r"^(env:)?[A-Za-z0-9_.-]{1,128}$"
HttpAuth = Literal["digest", "basic"]


def _secrets_placed(params: dict[str, str | int]) -> dict[str, str | int]:
    """`secret:`/`env:` only in secret parameters, and secret parameters only by reference (fleet.secret_params)."""
    secret_params.validate_field(params)
    return params


class Strict(BaseModel):
    # strict: no "5" for 5, no true for 1, no 3.0 for 3; allow_inf_nan: no `.inf` or `.nan` for a number
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """host:port; the port is required (default_port is kept for old callers and ignored)."""
    return validate.hostport(value)


def _check_params(params: dict, family: str) -> None:
    for name, value in params.items():
        try:
            validate.param(name, value, family)
        except ValueError as exc:
            raise FieldError(("params", name), str(exc)) from None


class Phone(Strict):
    mac: str
    model: str
    address: str
    http_port: int = Field(80, ge=1, le=65535)
    sip_port: int = Field(5060, ge=1, le=65535)
    credentials: str = Field(pattern=CREDENTIALS_RE, description="name of the secret holding the admin username/password")
    http_auth: HttpAuth = Field("digest", description="basic only for a phone that cannot do digest: it sends the "
                                                      "admin password in clear; site and fleet may set the default")
    params: dict[str, str | int] = {}

    @field_validator("params")
    @classmethod
    def secrets_placed(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        return _secrets_placed(v)

    @field_validator("mac", mode="before")
    @classmethod
    def normal_mac(cls, v) -> str:
        return validate.mac(v)

    _param_types = field_validator("params", mode="before")(classmethod(lambda cls, v: validate.param_types(v)))

    @field_validator("model")
    @classmethod
    def known_model(cls, v: str) -> str:
        return validate.phone_model(v)

    @field_validator("address")
    @classmethod
    def an_address(cls, v: str) -> str:
        return validate.host(v, "phone address")

    @property
    def has_rest(self) -> bool:
        """UC Software 5+ models (VVX, Trio) have the REST API; SoundPoint models on SIP 2.x-4.x do not."""
        return self.model.upper().startswith(("VVX", "TRIO"))


class Router(Strict):
    driver: str = Field(description="a name registered in fleet.drivers.router.DRIVERS")
    address: str
    port: int = Field(22, ge=1, le=65535)
    credentials: str = Field(pattern=CREDENTIALS_RE)
    wan_interface: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    known_hosts: str | None = Field(None, min_length=1, max_length=4096)
    accept_new_host_key: bool = False
    dns_port: int = Field(53, ge=1, le=65535)
    timeout: float = Field(10.0, gt=0, le=600)
    snmp_version: Literal["2c", "3"] = "3"
    allow_without_deadman: bool = Field(False, description="SNMP cannot schedule a restore on the router; "
                                                           "only the controller restores then")
    state_dir: str | None = Field(None, pattern=r"^/[A-Za-z0-9_./-]{1,200}$",
                                  description="private directory on the router for per-outage state files "
                                              "(default: ~/.fleet-outages of the SSH user)")

    @field_validator("address")
    @classmethod
    def an_address(cls, v: str) -> str:
        return validate.host(v, "router address")

    @field_validator("driver")
    @classmethod
    def a_registered_driver(cls, v: str) -> str:
        from .drivers.router import check_driver   # here, not at the top: the driver modules import this one

        return check_driver(v)


class BootServer(Strict):
    url: str = Field(pattern=r"^(https?|ftp|sftp|file)://", max_length=2048)
    credentials: str | None = Field(None, pattern=CREDENTIALS_RE)

    @field_validator("url")
    @classmethod
    def a_url(cls, v: str) -> str:
        validate.no_control(v, "URL")
        if any(c.isspace() for c in v):
            raise ValueError("URL contains white space")
        parts = urlsplit(v)
        if parts.scheme == "file":
            if not parts.path.startswith("/") or parts.netloc not in ("", "localhost"):
                raise ValueError("a file:// URL names an absolute directory (file:///srv/tftp/)")
            return v
        if not parts.hostname:
            raise ValueError(f"URL {v!r:.80} has no host")
        validate.host(parts.hostname.strip("[]"), "boot server host")
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
    allow_from: list[str] = Field([], description="networks (CIDR) whose syslog and events are accepted besides "
                                                  "the site's phones' own addresses")

    @field_validator("syslog", "events")
    @classmethod
    def hostport(cls, v: str, info) -> str:
        validate.hostport(v, f"collector {info.field_name} address")
        return v

    @field_validator("allow_from")
    @classmethod
    def networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network (e.g. 10.1.20.0/24)") from None
        return v


class Site(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    gateway: str
    dns: str | None = None
    timezone: str = "UTC"
    collector: Collector = Collector()
    boot_server: BootServer
    router: Router | None = None
    http_auth: HttpAuth | None = Field(None, description="default for this site's phones")
    params: dict[str, str | int] = {}
    phones: list[Phone] = []

    @field_validator("params")
    @classmethod
    def secrets_placed(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        return _secrets_placed(v)

    @field_validator("gateway")
    @classmethod
    def an_address(cls, v: str) -> str:
        return validate.host(v, "gateway address")

    _param_types = field_validator("params", mode="before")(classmethod(lambda cls, v: validate.param_types(v)))

    @field_validator("dns")
    @classmethod
    def dns_hostport(cls, v: str | None) -> str | None:
        if v is not None:
            validate.hostport(v, "DNS server address")
        return v

    @field_validator("timezone")
    @classmethod
    def a_timezone(cls, v: str) -> str:
        return validate.timezone(v)


class Provider(Strict):
    name: str
    port: int = Field(5060, ge=1, le=65535)

    @field_validator("name")
    @classmethod
    def a_name(cls, v: str) -> str:
        return validate.host(v, "provider name")


class Inventory(Strict):
    name: str = Field(min_length=1, max_length=200)
    firmware_family: Literal["sip-1.x", "sip-2.x", "sip-3.x", "uc-4.x", "uc-5.x"] = "sip-3.x"
    secrets_file: str | None = Field(None, min_length=1, max_length=4096)
    provider: Provider | None = None
    http_auth: HttpAuth | None = Field(None, description="default for every phone")
    params: dict[str, str | int] = {}
    registrar_limits: dict[str, float] = Field({}, description="REGISTER/s each server address may receive (R6)")
    sites: list[Site] = Field(min_length=1)
    source: str = Field("", exclude=True)

    @field_validator("params")
    @classmethod
    def secrets_placed(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        return _secrets_placed(v)

    @model_validator(mode="before")
    @classmethod
    def http_auth_defaults(cls, data):
        """Layer `http_auth` fleet -> site -> phone by filling each phone's own field from the nearest default."""
        if not isinstance(data, dict) or not isinstance(data.get("sites"), list):
            return data
        sites = []
        for site in data["sites"]:
            default = site.get("http_auth") or data.get("http_auth") if isinstance(site, dict) else None
            if default and isinstance(site.get("phones"), list):
                site = {**site, "phones": [{"http_auth": default, **p} if isinstance(p, dict) else p
                                           for p in site["phones"]]}
            sites.append(site)
        return {**data, "sites": sites}

    @field_validator("name")
    @classmethod
    def printable(cls, v: str) -> str:
        return validate.no_control(v, "name")

    _param_types = field_validator("params", mode="before")(classmethod(lambda cls, v: validate.param_types(v)))

    @field_validator("registrar_limits")
    @classmethod
    def limits(cls, v: dict[str, float]) -> dict[str, float]:
        for addr, limit in v.items():
            try:
                validate.host(addr, "server address")
            except ValueError as exc:
                raise FieldError((addr,), str(exc)) from None
            if not limit > 0:
                raise FieldError((addr,), "a limit is a positive number of REGISTER per second")
        return v

    @model_validator(mode="after")
    def unique(self) -> "Inventory":
        """Names and MACs once each; parameters known to the catalogue. Linear: 50,000 phones check in a blink."""
        _check_params(self.params, self.firmware_family)
        sites: dict[str, int] = {}
        macs: dict[str, tuple[int, int]] = {}
        for i, s in enumerate(self.sites):
            if s.name in sites:
                raise FieldError(("sites", i, "name"), f"site {s.name} is listed twice (also sites[{sites[s.name]}])")
            sites[s.name] = i
            try:
                _check_params(s.params, self.firmware_family)
            except FieldError as exc:
                raise FieldError(("sites", i) + exc.loc, str(exc)) from None
            for j, p in enumerate(s.phones):
                first = macs.setdefault(p.mac, (i, j))
                if first != (i, j):
                    raise FieldError(("sites", i, "phones", j, "mac"),
                                     f"MAC address listed twice: {p.mac} (also sites[{first[0]}].phones[{first[1]}])")
                if p.params:
                    try:
                        _check_params(p.params, self.firmware_family)
                    except FieldError as exc:
                        raise FieldError(("sites", i, "phones", j) + exc.loc, str(exc)) from None
        return self

    # ----------------------------------------------------------- lookups
    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site {name!r} in inventory {self.name}")

    def phone(self, mac: str) -> tuple[Site, Phone]:
        mac = mac.lower()
        for s in self.sites:
            for p in s.phones:
                if p.mac == mac:
                    return s, p
        raise KeyError(f"no phone {mac} in inventory {self.name}")

    def effective_params(self, site: Site, phone: Phone) -> dict[str, str]:
        """fleet -> site -> phone; the phone's own value wins."""
        merged: dict[str, str] = {}
        for layer in (self.params, site.params, phone.params):
            merged.update({k: str(v) for k, v in layer.items()})
        return merged

    def credential_refs(self) -> list[tuple[tuple, str]]:
        """Every secret name the inventory refers to, with where (for checking them against the secrets file)."""
        refs: list[tuple[tuple, str]] = []
        for i, s in enumerate(self.sites):
            if s.boot_server.credentials:
                refs.append((("sites", i, "boot_server", "credentials"), s.boot_server.credentials))
            if s.router:
                refs.append((("sites", i, "router", "credentials"), s.router.credentials))
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


class Secrets:
    def __init__(self, inventory: Inventory) -> None:
        self._data: dict = {}
        # Logins of the infrastructure (routers, boot servers) never go into a phone parameter: a plan forged
        # in Redis could otherwise publish the router's password to a boot server.
        self._device_logins = {c for site in inventory.sites for c in
                               [site.router.credentials if site.router else None, site.boot_server.credentials] if c}
        path = secrets_path(inventory)
        if path is not None:
            self._data = read_secrets(path)

    def check_refs(self, inventory: Inventory) -> None:
        """Every secret the inventory names is in the secrets file (env: references are resolved at use)."""
        src = source_of(inventory, inventory.source)
        for loc, name in inventory.credential_refs():
            if name.startswith("env:"):
                continue
            if not isinstance(self._data.get(name), dict):
                raise src.error(loc, f"no secret {name!r} in the secrets file {secrets_path(inventory) or '(none named)'}"
                                     + validate.did_you_mean(name, self._data))

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
    """keep_source: remember line numbers for later cross-checks (the CLI; not the workers, which only read)."""
    inv = load_model(path, Inventory, keep_source=keep_source)
    out = inv.model_copy(update={"source": str(Path(path).resolve())})
    if keep_source:
        remember_source(out, source_of(inv))
    return out
