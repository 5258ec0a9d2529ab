"""The lab file: what virtual hardware `hil up` starts (validated; errors name the line)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet.yamlfile import load_model

from .phone_types import FAULTS, MODELS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServerSpec(Strict):
    address: str = Field(description="'provider' (the provider's DNS name), 'gateway' (the site router), or a literal address")
    port: int = Field(5060, ge=1, le=65535)
    expires: int = Field(3600, ge=1)
    overlap: int = Field(60, ge=1, le=65535)
    register_: Literal[0, 1] = Field(1, alias="register")
    retry_timeout_ms: int = Field(0, ge=0)
    retry_max_count: int = Field(3, ge=0)


class PhonesSpec(Strict):
    count: int = Field(ge=0, le=20000)
    models: list[str] = ["SoundPoint IP 650"]
    first_extension: int = Field(1001, ge=1)

    @field_validator("models")
    @classmethod
    def known_models(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in MODELS:
                raise ValueError(f"unknown model {m!r}; known: {', '.join(MODELS)}")
        if not v:
            raise ValueError("at least one model")
        return v


class CollectorSpec(Strict):
    """Where the controller listens; written into the phones' configuration and the inventory."""
    syslog: str = "127.0.0.1:5514"
    events: str = "127.0.0.1:8514"
    poll_interval: float = Field(0.0, ge=0)


class SiteSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    boot_protocol: Literal["http", "ftp"] = "http"
    phones: PhonesSpec
    servers: list[ServerSpec] = Field(min_length=1, max_length=9)
    faults: dict[int, str] = {}
    params: dict[str, str | int] = {}
    collector: CollectorSpec = CollectorSpec()

    @field_validator("faults")
    @classmethod
    def known_faults(cls, v: dict[int, str]) -> dict[int, str]:
        for fault in v.values():
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        return v


class ProviderSpec(Strict):
    name: str = "voip.provider.example"
    realm: str = "provider.example"
    max_expires: int = 3600


class TimingSpec(Strict):
    boot_time: float = Field(2.0, ge=0)
    boot_jitter: float = Field(1.0, ge=0, description="first boots spread over this many seconds (a site powering up)")
    retry_interval: float = Field(30, gt=0, description="registerRetry.baseTimeOut given to the phones")
    log_upload_period: float = Field(60, ge=0)
    dns_ttl: int = Field(5, ge=1)
    http_latency: float = Field(0.0, ge=0, le=10, description="seconds each phone HTTP answer takes (embedded web servers are slow)")


class LabFile(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    net: int = Field(10, ge=1, le=60, description="second octet base of the lab's 127.x addresses")
    backend: Literal["userspace", "netns"] = Field("userspace", description="netns: real router, OpenSSH, net-snmp and "
                                                   "Kamailio in network namespaces (root only; see hil/netns)")
    firmware_family: Literal["sip-3.x", "uc-5.x"] = "sip-3.x"
    provider: ProviderSpec = ProviderSpec()
    timing: TimingSpec = TimingSpec()
    http: bool = True
    sites: list[SiteSpec] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def unique_sites(self) -> "LabFile":
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("site names must be unique")
        if self.backend == "netns":
            from .netns.plan import MAX_PHONES_PER_SITE, MAX_SITES

            if len(self.sites) > MAX_SITES or any(s.phones.count > MAX_PHONES_PER_SITE for s in self.sites):
                raise ValueError(f"backend netns: at most {MAX_SITES} sites of at most {MAX_PHONES_PER_SITE} phones each")
        return self


def load(path: str | Path) -> LabFile:
    return load_model(path, LabFile)
