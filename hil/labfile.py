"""The lab file: what virtual hardware `hil up` starts (validated; errors name the line)."""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from soundpoint import bootfiles, catalogue, families, values
from soundpoint.strict import Strict
from soundpoint.yamlfile import FieldError, load_model

from .phone_types import FAULTS, LATE_FAILOVER_S, MODELS

SHARED_SIP_ABOVE = 2000     # phones: above this, sip_sockets auto shares one socket (hil.sip_mux)
# Failed registrations on a family without registerRetry.* (SIP 2.x/3.x, UC Software 4.0) are retried at a fixed
# interval no parameter sets: "typically 30 to 60 seconds" (the seed bulletin) is all that is documented.
FIXED_RETRY_RANGE = (30.0, 60.0)


def _family_name(v: str | None) -> str | None:
    """A family name from soundpoint.families (an old or misspelt one is refused with a hint)."""
    if v is None:
        return v
    try:
        return families.get(v).name
    except families.FamilyError as exc:
        raise ValueError(str(exc)) from None


def _loopback(value: str, what: str) -> str:
    """The lab lives on 127.0.0.0/8: an address elsewhere would send its traffic off this machine."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r:.60} is not an IP address") from None
    if not ip.is_loopback:
        raise ValueError(f"{what} {value} is not a loopback address (the lab only uses 127.0.0.0/8)")
    return value


class ServerSpec(Strict):
    model_config = ConfigDict(populate_by_name=True)   # `register` in the file, `register_` in Python

    address: str = Field(description="'provider' (the provider's DNS name), 'gateway' (the site router), or a literal address")
    port: int = Field(5060, ge=0, le=65535, description="0: no port, so a named server with transport DNSnaptr "
                      "(the default) is located by NAPTR, SRV and A records (RFC 3263; see provider.naptr_srv)")
    expires: int = Field(3600, ge=1, le=2**31 - 1)
    overlap: int = Field(60, ge=1, le=65535)
    register_: Literal[0, 1] = Field(1, alias="register")
    retry_timeout_ms: int = Field(0, ge=0, le=2**31 - 1)
    retry_max_count: int = Field(3, ge=0, le=100)
    re_register: Literal[0, 1] = Field(1, description="failOver.reRegisterOn written for this server on families that "
                                                       "have it (UC Software 5.x; the phone's own default is 0)")

    @field_validator("address")
    @classmethod
    def provider_gateway_or_loopback(cls, v: str) -> str:
        return v if v in ("provider", "gateway") else _loopback(v, "server address ('provider', 'gateway' or")

    @model_validator(mode="after")
    def overlap_below_expires(self) -> "ServerSpec":
        if self.overlap >= self.expires:
            raise FieldError(("overlap",), f"overlap ({self.overlap} s) must be less than expires ({self.expires} s): "
                                           "the phone would refresh before its registration even started")
        return self


FailoverBehaviour = Literal["concurrent", "on-failure"]

def _firmware_version(v: str, loc: tuple) -> str:
    """Two to four dot-separated numbers ("5.7.0"); FieldError at `loc` otherwise."""
    if not isinstance(v, str) or not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,6}){1,3}", v):
        raise FieldError(loc, f"firmware version {str(v)[:40]!r}: expected numbers separated by dots, such as "
                              "\"5.7.0\" (quoted)")
    return v


class PhonesSpec(Strict):
    count: int = Field(ge=0, le=20000)
    models: list[str] = ["SoundPoint IP 650"]
    first_extension: int = Field(1001, ge=1, le=10**9)
    families: dict[str, str] = Field({}, description="firmware family per model, over the site's")
    family_of: dict[int, str] = Field({}, description="firmware family per phone (by index), over everything")
    version_of: dict[int, str] = Field({}, description="firmware version per phone (by index), over the site's "
                                       "firmware_version: the virtual phone reports it and answers in its shapes "
                                       "(REST from 5.4, v2 callStatus from 5.8, UpTime/Firmware objects from 5.7)")
    params_of: dict[int, dict[str, str | int]] = Field({}, description="parameters per phone (by index), over the "
                                                       "site's: written in the phone's own <MAC>-reg.cfg (read first, "
                                                       "so they win) and its inventory entry")
    failover_behaviour: FailoverBehaviour = Field("concurrent", description="UC Software with failOver.reRegisterOn=1: "
                                                  "concurrent registers with server 2 from boot (TB 5844), on-failure "
                                                  "only once server 1 has failed (the guides read both ways)")
    failover_behaviour_of: dict[int, FailoverBehaviour] = Field({}, description="failover_behaviour per phone (by index)")
    source_validation: Literal["configured", "primary"] = Field(
        "configured", description="how a phone with voIpProt.SIP.requestValidation by source for INVITE reads it: "
        "configured accepts calls from every configured registration server (the guides' 'set of target "
        "registration servers'), primary only from reg.x.server.1 (operators' reports: calls from server 2 get "
        "400 Bad Request); conformance sipval-invite-source-refused")

    def behaviour_of(self, i: int) -> str:
        return self.failover_behaviour_of.get(i, self.failover_behaviour)

    @field_validator("params_of", mode="before")
    @classmethod
    def param_mappings(cls, v):
        if isinstance(v, dict):
            for i, params in v.items():
                try:
                    catalogue.param_types(params)
                except FieldError as exc:
                    raise FieldError((i, *exc.loc), str(exc)) from None
        return v

    @field_validator("families")
    @classmethod
    def known_model_families(cls, v: dict[str, str]) -> dict[str, str]:
        for model, fam in v.items():
            if model not in MODELS:
                raise FieldError((model,), f"unknown model {model!r}; known: {', '.join(MODELS)}")
            try:
                v[model] = _family_name(fam)  # type: ignore[assignment]
            except ValueError as exc:
                raise FieldError((model,), str(exc)) from None
        return v

    @field_validator("family_of")
    @classmethod
    def known_phone_families(cls, v: dict[int, str]) -> dict[int, str]:
        for i, fam in v.items():
            try:
                v[i] = _family_name(fam)  # type: ignore[assignment]
            except ValueError as exc:
                raise FieldError((i,), str(exc)) from None
        return v

    @field_validator("version_of")
    @classmethod
    def version_numbers(cls, v: dict[int, str]) -> dict[int, str]:
        for i, version in v.items():
            _firmware_version(version, (i,))
        return v

    def model_of(self, i: int) -> str:
        return self.models[i % len(self.models)]

    @field_validator("models")
    @classmethod
    def known_models(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in MODELS:
                raise ValueError(f"unknown model {m!r}; known: {', '.join(MODELS)}")
        if not v:
            raise ValueError("at least one model")
        return v


AUTO = "auto"
AUTO_PORTS = {"syslog": 5514, "events": 8514, "hep": 9060}


def collector_address(net: int, k: int, kind: str) -> str:
    """Where site k's collector listens when the lab file says `auto`: in the lab's own 127.(net+40) block, which
    hil.netlock gives this lab alone, so two labs on one machine (two demos, two suites) never want the same
    listener. The controller host is loopback in the userspace lab; the namespace lab keeps only the port."""
    return f"127.{net + 40}.250.{k + 1}:{AUTO_PORTS[kind]}"


class CollectorSpec(Strict):
    """Where the controller listens; written into the phones' configuration and the inventory."""
    syslog: str = Field(AUTO, description="HOST:PORT on loopback, or auto (the default): an address in the lab's "
                        f"own block (hil.labfile.collector_address), port {AUTO_PORTS['syslog']}")
    events: str = Field(AUTO, description=f"HOST:PORT on loopback, or auto: the lab's own, port {AUTO_PORTS['events']}")
    poll_interval: float = Field(0.0, ge=0, le=3600)
    hep: str | None = Field(None, description="HOST:PORT where a Kamailio gateway's siptrace sends HEP v3 (or auto: "
                            f"the lab's own address, port {AUTO_PORTS['hep']})")
    hep_auth_key: bool = Field(False, description="the Kamailio gateway's siptrace signs its HEP with a key the lab "
                               "makes (siptrace auth_key, HEP v3 chunk 14); the inventory names it as the sender's "
                               "auth key (a secret) and the collector drops HEP without it")
    evidence: list[Literal["router", "hep", "gateway"]] | None = Field(
        None, description="per-server sources the exported inventory names for the site: router (capture: router "
        "lan0), hep (capture: hep ADDRESS), gateway (the Kamailio registrar's bindings); default: what a site of "
        "this shape has (the router's capture when the syslog line is off, HEP and bindings with a Kamailio gateway)")

    @field_validator("syslog", "events")
    @classmethod
    def loopback_hostport(cls, v: str, info) -> str:
        if v == AUTO:
            return v
        host, _ = values.hostport(v, f"collector {info.field_name} address")
        _loopback(host, f"collector {info.field_name} host")
        return v

    @model_validator(mode="after")
    def key_needs_hep(self) -> "CollectorSpec":
        if self.hep_auth_key and not self.hep:
            raise ValueError("hep_auth_key needs the HEP address (collector: {hep: HOST:PORT})")
        return self

    @field_validator("hep")
    @classmethod
    def loopback_hep(cls, v: str | None) -> str | None:
        if v is not None and v != AUTO:
            host, _ = values.hostport(v, "collector hep address")
            _loopback(host, "collector hep host")
        return v


class SiteSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    firmware_family: str | None = Field(None, description="default for this site's phones, over the lab's")
    firmware_version: str | None = Field(None, description="firmware version of this site's UC Software 5 phones "
                                         "(e.g. \"5.7.0\"; phones.version_of per phone): what they report and "
                                         "the answer shapes they use")
    boot_protocol: Literal["http", "ftp"] = "http"
    boot_master: str | None = Field(None, description="a master file named in the phones' boot-server address "
                                    "(ftp://host/campus.cfg): the lab writes it instead of each phone's <MAC>.cfg, "
                                    "the phones read it first, and the inventory says so (boot_server.master_file)")
    phones: PhonesSpec
    servers: list[ServerSpec] = Field(min_length=1, max_length=9)
    faults: dict[int, str] = {}
    params: dict[str, str | int] = {}
    collector: CollectorSpec = CollectorSpec()
    gateway: Literal["builtin", "kamailio"] = Field("builtin", description="the site's gateway registrar: the lab's "
                                                    "own, or Kamailio (installed on this machine) on the router")
    outbound_proxy: Literal["gateway"] | None = Field(None, description="gateway: the phones use the site's Kamailio "
                                                      "gateway as their outbound proxy for the provider (it relays "
                                                      "there through the router), so every REGISTER passes it")

    _param_types = field_validator("params", mode="before")(classmethod(lambda cls, v: catalogue.param_types(v)))

    _family = field_validator("firmware_family")(classmethod(lambda cls, v: _family_name(v)))

    _master = field_validator("boot_master")(classmethod(lambda cls, v: bootfiles.named_master(v)))

    @field_validator("firmware_version")
    @classmethod
    def version_number(cls, v: str | None) -> str | None:
        return _firmware_version(v, ()) if v is not None else v

    @field_validator("faults")
    @classmethod
    def known_faults(cls, v: dict[int, str]) -> dict[int, str]:
        for i, fault in v.items():
            if fault not in FAULTS:
                raise FieldError((i,), f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        return v

    @model_validator(mode="after")
    def faults_name_phones(self) -> "SiteSpec":
        for i in self.faults:
            if not 0 <= i < self.phones.count:
                raise FieldError(("faults", i), f"phone {i} does not exist: this site has phones 0 to {self.phones.count - 1}")
        for what, indices in (("family_of", self.phones.family_of), ("params_of", self.phones.params_of),
                              ("failover_behaviour_of", self.phones.failover_behaviour_of)):
            for i in indices:
                if not 0 <= i < self.phones.count:
                    raise FieldError(("phones", what, i),
                                     f"phone {i} does not exist: this site has phones 0 to {self.phones.count - 1}")
        return self


class ProviderSpec(Strict):
    name: str = "voip.provider.example"
    realm: str = Field("provider.example", pattern=r"^[A-Za-z0-9.-]{1,253}$")
    max_expires: int = Field(3600, ge=1, le=2**31 - 1)
    naptr_srv: bool = Field(False, description="the lab DNS also serves NAPTR (SIP+D2U) and SRV (_sip._udp) for the "
                            "provider's name (RFC 3263), which phones in DNSnaptr mode with port 0 follow; "
                            "userspace backend only")

    @field_validator("name")
    @classmethod
    def a_host_name(cls, v: str) -> str:
        values.host(v, "provider name")
        if values.is_ip(v):
            raise ValueError("the provider is a DNS name (the lab serves it), not an address")
        return v


class TimingSpec(Strict):
    boot_time: float = Field(2.0, ge=0, le=600)
    boot_jitter: float = Field(1.0, ge=0, le=3600, description="first boots spread over this many seconds (a site powering up)")
    retry_interval: float = Field(30, gt=0, le=3600, description="registerRetry.baseTimeOut given to the phones "
                                  "(UC Software 5.x: 10-120); on families without it, the fixed retry unless fixed_retry is set")
    retry_max: float | None = Field(None, gt=0, le=3600, description="registerRetry.maxTimeOut (UC Software 5.x: "
                                    "60-1800; default 60, or retry_interval with test_speed: no backoff)")
    fixed_retry: float | None = Field(None, gt=0, le=3600, description="the fixed retry of SIP 2.x/3.x and UC Software "
                                      "4.0 phones (no parameter sets it; the seed says 30 to 60 s)")
    test_speed: bool = Field(False, description="timers below the real firmware ranges, for the test suite: not "
                             "checked against the families, and a model that cannot run the lab's family runs the "
                             "newest family it can. The exported inventory leaves out what no real phone accepts")
    log_upload_period: float = Field(60, ge=0, le=86400)
    dns_ttl: int = Field(5, ge=1, le=86400)
    http_latency: float = Field(0.0, ge=0, le=10, description="seconds each phone HTTP answer takes (embedded web servers are slow)")
    late_failover_s: float = Field(LATE_FAILOVER_S, gt=0, le=3600, description="lab fault `late-failover`: how long server 1 "
                                   "is down before such a phone sends its fallback a REGISTER")


class LabFile(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    net: Annotated[int, Field(ge=1, le=150)] | Literal["auto"] = Field(
        "auto", description="auto (the default): a net no other lab on this machine holds, chosen at start under a "
        "lock (hil.netlock); or the second octet base of the lab's 127.x addresses (userspace: net+100+sites-1 at "
        "most 254, hil.lab's address plan; netns: 1-60, hil.netns.plan), refused at start if another lab holds it")
    backend: Literal["userspace", "netns"] = Field("userspace", description="netns: real router, OpenSSH, net-snmp and "
                                                   "Kamailio in network namespaces (root only; see hil/netns)")
    firmware_family: str = Field("sip-3.x", description="default for every phone; sites and phones may override")
    provider: ProviderSpec = ProviderSpec()
    timing: TimingSpec = TimingSpec()
    http: bool = True
    sip_sockets: Literal["auto", "shared", "per-phone"] = Field(
        "auto", description="per-phone: each phone's SIP on a socket of its own at port 5060; shared: one socket per "
        "lab process on a free port, each phone still sending from its own address (hil.sip_mux: one descriptor "
        "instead of one per phone), and with `http` one HTTP listener for every phone on a free port "
        "(hil.http_mux); auto: shared above SHARED_SIP_ABOVE phones")
    sites: list[SiteSpec] = Field(min_length=1, max_length=20)
    syslog_registration_line: bool = Field(True, description="false: phones send none of our syslog lines (the "
                                           "per-server registration line and the call line, undocumented by Polycom), "
                                           "as on a SIP 3.x site")

    _family = field_validator("firmware_family")(classmethod(lambda cls, v: _family_name(v)))

    @property
    def phone_count(self) -> int:
        return sum(site.phones.count for site in self.sites)

    @property
    def shared_sip(self) -> bool:
        """Whether the phones share one SIP socket (sip_sockets)."""
        return self.sip_sockets == "shared" or (self.sip_sockets == "auto" and self.phone_count > SHARED_SIP_ABOVE)

    @property
    def retry_max(self) -> float:
        if self.timing.retry_max is not None:
            return self.timing.retry_max
        return self.timing.retry_interval if self.timing.test_speed else 60.0

    @property
    def fixed_retry(self) -> float:
        return self.timing.fixed_retry if self.timing.fixed_retry is not None else self.timing.retry_interval

    def model_family(self, k: int, model: str) -> str:
        """The family a phone of this model at site k runs unless the phone has its own: the model's, else the
        site's, else the lab's (with test_speed, a model that cannot run the lab's family runs the newest it can)."""
        site = self.sites[k]
        explicit = site.phones.families.get(model) or site.firmware_family
        if explicit:
            return explicit
        fam = families.get(self.firmware_family)
        if self.timing.test_speed and not fam.runs_on(model):
            return (families.families_for(model) or [fam])[-1].name
        return fam.name

    def on_net(self, net: int) -> "LabFile":
        """This lab file with the net hil.netlock claimed for it and every `auto` collector address made concrete:
        what the running lab and its inventory use."""
        sites = []
        for k, site in enumerate(self.sites):
            c = site.collector
            update = {kind: collector_address(net, k, kind) for kind in AUTO_PORTS if getattr(c, kind) == AUTO}
            sites.append(site.model_copy(update={"collector": c.model_copy(update=update)}) if update else site)
        return self.model_copy(update={"net": net, "sites": sites})

    def phone_family(self, k: int, i: int) -> str:
        """The family phone i of site k runs: its own (phones.family_of), else its model's default."""
        site = self.sites[k]
        return site.phones.family_of.get(i) or self.model_family(k, site.phones.model_of(i))

    def phone_version(self, k: int, i: int) -> str:
        """The firmware version phone i of site k reports: its own (phones.version_of), else the site's for a
        UC Software 5 phone, else "" (the family's typical release, hil.phone_types.FIRMWARE)."""
        site = self.sites[k]
        if i in site.phones.version_of:
            return site.phones.version_of[i]
        return site.firmware_version or "" if self.phone_family(k, i) == "uc-5.x" else ""

    def _check_versions(self, k: int) -> None:
        """A per-phone version must belong to the phone's family (5.7.0 on a sip-3.x phone is a typo)."""
        site = self.sites[k]
        for i, version in site.phones.version_of.items():
            fam = self.phone_family(k, i)
            major = {"sip-2.x": "2", "sip-3.x": "3", "uc-4.0": "4", "uc-5.x": "5"}[fam]
            if version.split(".")[0] != major:
                raise FieldError(("sites", k, "phones", "version_of", i),
                                 f"firmware version {version} is not a {fam} version (phone {i} runs {fam})")
        if site.firmware_version and not site.firmware_version.startswith("5."):
            raise FieldError(("sites", k, "firmware_version"), f"firmware_version {site.firmware_version}: the "
                             "site's version is for its UC Software 5 phones (5.x); use phones.version_of for others")

    def site_families(self, k: int) -> list[str]:
        site = self.sites[k]
        used = {self.model_family(k, m) for m in site.phones.models[: max(site.phones.count, 1)]}
        used |= set(site.phones.family_of.values())
        return sorted(used, key=families.NAMES.index)

    def _check_models(self, k: int) -> None:
        """Every phone's model must run its family; the error names the field that chose the family."""
        site = self.sites[k]
        for i, fam in site.phones.family_of.items():
            try:
                families.check_model(site.phones.model_of(i), families.get(fam))
            except families.FamilyError as exc:
                raise FieldError(("sites", k, "phones", "family_of", i), str(exc)) from None
        for model in site.phones.models[: max(site.phones.count, 1)]:
            fam = self.model_family(k, model)
            try:
                families.check_model(model, families.get(fam))
            except families.FamilyError as exc:
                loc = (("sites", k, "phones", "families", model) if model in site.phones.families
                       else ("sites", k, "firmware_family") if site.firmware_family else ("firmware_family",))
                raise FieldError(loc, f"{exc} (sites[{k}] phones.models)") from None

    def _check_timers(self, k: int) -> None:
        """The values the lab writes into this site's files, inside the real ranges of every family there."""
        site = self.sites[k]
        fams = [families.get(f) for f in self.site_families(k)]
        for y, srv in enumerate(site.servers):
            timers = [("expires", "expires", srv.expires), ("overlap", "expires.overlap", srv.overlap),
                      ("retry_timeout_ms", "retryTimeOut", srv.retry_timeout_ms),
                      ("retry_max_count", "retryMaxCount", srv.retry_max_count)]
            for fam in fams:
                for field, param, value in timers:
                    try:
                        catalogue.param(f"reg.1.server.{y + 1}.{param}", value, fam.name)
                    except ValueError as exc:
                        if self.timing.test_speed and field == "expires":
                            continue
                        raise FieldError(("sites", k, "servers", y, field), str(exc)) from None
        if self.timing.test_speed:
            return
        for fam in fams:
            if fam.failover_controls:
                for field, param, value in (("retry_interval", "baseTimeOut", self.timing.retry_interval),
                                            ("retry_max", "maxTimeOut", self.retry_max)):
                    if value != int(value):
                        raise FieldError(("timing", field), f"registerRetry.{param} is whole seconds, not {value:g}")
                    try:
                        catalogue.param(f"reg.1.server.1.registerRetry.{param}", int(value), fam.name)
                    except ValueError as exc:
                        raise FieldError(("timing", field), f"{exc} (sites[{k}] has {fam.name} phones)") from None
            else:
                lo, hi = FIXED_RETRY_RANGE
                if not lo <= self.fixed_retry <= hi:
                    field = "fixed_retry" if self.timing.fixed_retry is not None else "retry_interval"
                    raise FieldError(("timing", field),
                                     f"{fam.name} phones (sites[{k}]) retry a failed registration at a fixed interval of "
                                     f"{lo:g} to {hi:g} s (no parameter sets it); {self.fixed_retry:g} s is not one "
                                     f"(set timing.fixed_retry, or test_speed: true for a test lab)")

    def _check_phone_params(self, k: int) -> None:
        """Each phone's own parameters, valid for the family it runs. With test_speed an integer below or above the
        real range is kept (a failBack.timeout of seconds, not minutes); the exported inventory carries the nearest
        value a real phone accepts (hil.inventory_export.fit_to_families)."""
        site = self.sites[k]
        for i, params in site.phones.params_of.items():
            fam = families.get(self.phone_family(k, i))
            for name, value in params.items():
                try:
                    catalogue.param(name, value, fam.name)
                except ValueError as exc:
                    p = fam.lookup(name)
                    if (self.timing.test_speed and p is not None and p.kind == "int"
                            and str(value).strip().isdigit()):
                        continue
                    raise FieldError(("sites", k, "phones", "params_of", i, name), str(exc)) from None

    @model_validator(mode="after")
    def unique_sites(self) -> "LabFile":
        """Site names once each, every phone's model able to run its family, and every value the lab writes into
        phones' files valid for the families at the site."""
        names: dict[str, int] = {}
        for k, site in enumerate(self.sites):
            if site.name in names:
                raise FieldError(("sites", k, "name"), f"site {site.name} is listed twice (also sites[{names[site.name]}])")
            names[site.name] = k
            self._check_models(k)
            self._check_versions(k)
            self._check_timers(k)
            fams = [families.get(f) for f in self.site_families(k)]
            for name, value in site.params.items():
                knowing = [f for f in fams if f.lookup(name) is not None] or fams
                for fam in knowing:
                    try:
                        catalogue.param(name, value, fam.name)
                    except ValueError as exc:
                        raise FieldError(("sites", k, "params", name), str(exc)) from None
            self._check_phone_params(k)
            for y, srv in enumerate(site.servers):
                if srv.address == "provider" and min(srv.expires, self.provider.max_expires) == srv.overlap:
                    # the guides' overlap rule (soundpoint.timing): a grant equal to the overlap refreshes at once
                    # (below it: at half the grant; above it: overlap s before it)
                    raise FieldError(("sites", k, "servers", y, "overlap"),
                                     f"overlap ({srv.overlap} s) must not equal the expiry the provider grants "
                                     f"({min(srv.expires, self.provider.max_expires)} s): the phone would "
                                     "re-register at once, again and again")
        if self.backend == "userspace" and self.net != "auto" and self.net + 100 + len(self.sites) - 1 > 254:
            raise FieldError(("net",), f"net {self.net} with {len(self.sites)} site(s) would need 127."
                             f"{self.net + 100 + len(self.sites) - 1}.x.x for phones: at most {255 - 100 - len(self.sites)}")
        if self.backend == "netns":
            from .netns.plan import MAX_PHONES_PER_SITE, MAX_SITES

            if self.net != "auto" and self.net > 60:
                raise FieldError(("net",), f"backend netns: net {self.net} is above 60 (its LANs and WAN addresses "
                                 "are laid out for nets 1-60)")

            if len(self.sites) > MAX_SITES:
                raise FieldError(("sites",), f"backend netns: at most {MAX_SITES} sites")
            if self.provider.naptr_srv:
                raise FieldError(("provider", "naptr_srv"), "backend netns: its DNS process serves A records only "
                                 "(naptr_srv is for the userspace backend)")
            for k, site in enumerate(self.sites):
                if site.phones.count > MAX_PHONES_PER_SITE:
                    raise FieldError(("sites", k, "phones", "count"),
                                     f"backend netns: at most {MAX_PHONES_PER_SITE} phones per site")
        return self

    def _check_proxy(self, k: int) -> None:
        """`outbound_proxy: gateway` needs a gateway that relays (Kamailio; the built-in registrar does not), and
        servers it can relay for: it sends everything not for itself to the provider, so a server at another
        address would be relayed to the wrong place."""
        site = self.sites[k]
        loc = ("sites", k, "outbound_proxy")
        if site.gateway != "kamailio":
            raise FieldError(loc, "outbound_proxy: gateway needs `gateway: kamailio` (the lab's built-in gateway "
                                  "registrar does not relay)")
        if self.backend == "netns":
            raise FieldError(loc, "backend netns does not wire the gateway's relay yet; outbound_proxy is for the "
                                  "userspace lab")
        others = [y for y, srv in enumerate(site.servers) if srv.address not in ("provider", "gateway")]
        if others:
            raise FieldError(("sites", k, "servers", others[0], "address"),
                             "with outbound_proxy: gateway every server is `provider` or `gateway` (the gateway "
                             "relays to the provider only)")

    @model_validator(mode="after")
    def hep_needs_kamailio(self) -> "LabFile":
        """Only Kamailio's siptrace sends HEP here; a HEP address without it would promise evidence never sent.
        Only Kamailio relays, so `outbound_proxy` needs it too (_check_proxy)."""
        for k, site in enumerate(self.sites):
            if site.collector.hep and site.gateway != "kamailio":
                raise FieldError(("sites", k, "collector", "hep"), "a HEP address needs `gateway: kamailio` "
                                 "(only Kamailio's siptrace sends HEP in this lab)")
            for source, needs, why in (("hep", site.collector.hep, "a `collector: {hep: ADDRESS}`"),
                                       ("gateway", site.gateway == "kamailio", "`gateway: kamailio`")):
                if source in (site.collector.evidence or ()) and not needs:
                    raise FieldError(("sites", k, "collector", "evidence"), f"evidence {source} needs {why}")
            if site.outbound_proxy is not None:
                self._check_proxy(k)
            if site.collector.hep and self.backend == "netns":
                raise FieldError(("sites", k, "collector", "hep"), "backend netns does not wire siptrace yet "
                                 "(its router runs the real tcpdump); HEP is for the userspace lab")
        return self


def load(path: str | Path) -> LabFile:
    return load_model(path, LabFile)
