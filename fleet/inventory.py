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

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .yamlfile import FileError, load_model

MAC_RE = re.compile(r"^[0-9a-f]{12}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hostport(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":") if ":" in value else (value, "", str(default_port))
    if not host:
        host, port = value, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port)


class Phone(Strict):
    mac: str
    model: str
    address: str
    http_port: int = Field(80, ge=1, le=65535)
    sip_port: int = Field(5060, ge=1, le=65535)
    credentials: str = Field(description="name of the secret holding the admin username/password")
    params: dict[str, str | int] = {}

    @field_validator("mac", mode="before")
    @classmethod
    def normal_mac(cls, v: str) -> str:
        v = str(v).lower().replace(":", "").replace("-", "")
        if not MAC_RE.match(v):
            raise ValueError("MAC address must be 12 hex digits")
        return v

    @property
    def has_rest(self) -> bool:
        """UC Software 5+ models (VVX, Trio) have the REST API; SoundPoint models on SIP 2.x-4.x do not."""
        return self.model.upper().startswith(("VVX", "TRIO"))


class Router(Strict):
    driver: Literal["linux_ssh", "snmp"]
    address: str
    port: int = Field(22, ge=1, le=65535)
    credentials: str
    wan_interface: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    dns_port: int = Field(53, ge=1, le=65535)
    timeout: float = Field(10.0, gt=0)
    snmp_version: Literal["2c", "3"] = "3"
    allow_without_deadman: bool = Field(False, description="SNMP cannot schedule a restore on the router; "
                                                           "only the controller restores then")


class BootServer(Strict):
    url: str = Field(pattern=r"^(https?|ftp|sftp|file)://")
    credentials: str | None = None


class Collector(Strict):
    syslog: str = "0.0.0.0:514"     # a wildcard is refused when the collector starts: name the address phones send to
    events: str = "0.0.0.0:8514"
    poll_interval: float = Field(0.0, ge=0, description="seconds between state-polling rounds; 0: push sources only")
    poll_concurrency: int = Field(200, ge=1, le=5000)
    allow_from: list[str] = Field([], description="networks (CIDR) whose syslog and events are accepted besides "
                                                  "the site's phones' own addresses")

    @field_validator("syslog", "events")
    @classmethod
    def hostport(cls, v: str) -> str:
        _hostport(v, 514)
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
    params: dict[str, str | int] = {}
    phones: list[Phone] = []


class Provider(Strict):
    name: str
    port: int = 5060


class Inventory(Strict):
    name: str
    firmware_family: Literal["sip-1.x", "sip-2.x", "sip-3.x", "uc-4.x", "uc-5.x"] = "sip-3.x"
    secrets_file: str | None = None
    provider: Provider | None = None
    params: dict[str, str | int] = {}
    registrar_limits: dict[str, float] = Field({}, description="REGISTER/s each server address may receive (R6)")
    sites: list[Site] = Field(min_length=1)
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def unique(self) -> "Inventory":
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("site names must be unique")
        macs = [p.mac for s in self.sites for p in s.phones]
        dup = {m for m in macs if macs.count(m) > 1}
        if dup:
            raise ValueError(f"MAC address listed twice: {', '.join(sorted(dup))}")
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


class Secrets:
    def __init__(self, inventory: Inventory) -> None:
        self._data: dict = {}
        if inventory.secrets_file:
            path = Path(inventory.secrets_file)
            if not path.is_absolute() and inventory.source:
                path = Path(inventory.source).parent / path
            try:
                self._data = yaml.safe_load(path.read_text()) or {}
            except FileNotFoundError:
                raise FileError(path, None, "", "secrets file not found") from None
            except yaml.YAMLError:
                raise FileError(path, None, "", "secrets file is not valid YAML") from None  # no details: they may quote secrets

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

    def resolve_param(self, value: str) -> str:
        if value.startswith("secret:"):
            return self.credentials(value[7:]).password
        if value.startswith("env:"):
            return self.credentials(value).password
        return value


def load(path: str | Path) -> Inventory:
    inv = load_model(path, Inventory)
    return inv.model_copy(update={"source": str(Path(path).resolve())})
