"""Predicted worst-case failover and recovery times, from a phone's configuration.

A phone notices a dead primary only when it next talks to it: at its refresh
(`expires - overlap`, or half the expiry when that is sooner), plus the time
the REGISTER transaction takes to fail (RFC 3261 Timer F = 32 s, or
retryTimeOut x (retryMaxCount + 1) with Polycom's overrides). After the WAN
returns, the phone retries the primary every retry interval; how soon it then
treats the primary as working again depends on the firmware's failback mode.
"""
from __future__ import annotations

from dataclasses import dataclass

DETECTION_SLACK = 1.0   # seconds: syslog/event delivery and the resolver's own timeout budget


@dataclass(frozen=True)
class ServerTiming:
    index: int
    address: str
    register: bool
    expires: int
    overlap: int
    transaction_timeout: float
    retry_interval: float
    failback_mode: str
    failback_timeout: int
    retry_max_count: int = 3


def server_timing(params: dict[str, str], reg: int, server: int) -> ServerTiming | None:
    def get(attr: str, default: str) -> str:
        for key in (f"reg.{reg}.server.{server}.{attr}", f"voIpProt.server.{server}.{attr}"):
            if params.get(key, "") != "":
                return params[key]
        return default

    if not get("address", ""):
        return None
    retry_ms = int(get("retryTimeOut", "0") or 0)
    retry_count = int(get("retryMaxCount", "3") or 0) or 3
    tx = retry_ms / 1000 * (retry_count + 1) if retry_ms else 32.0
    return ServerTiming(index=server, address=get("address", ""), register=get("register", "1") != "0", expires=int(get("expires", "3600")),
                        overlap=int(get("expires.overlap", "60")), transaction_timeout=tx,
                        retry_interval=float(get("registerRetry.baseTimeOut", "60")),
                        failback_mode=get("failOver.failBack.mode", "newRequests"),
                        failback_timeout=int(get("failOver.failBack.timeout", "3600")), retry_max_count=retry_count)


def servers(params: dict[str, str], reg: int = 1) -> list[ServerTiming]:
    out = []
    for y in range(1, 10):
        t = server_timing(params, reg, y)
        if t:
            out.append(t)
    return out


def configured_servers(params: dict[str, str], reg: int = 1) -> list[dict]:
    """The servers of a registration as the store and `fleet status` list them."""
    return [{"index": t.index, "register": t.register, "address": t.address} for t in servers(params, reg)]


def refresh_interval(expires: int, overlap: int) -> float:
    return expires - overlap if expires / 2 >= overlap else expires / 2


def failover_max(params: dict[str, str], reg: int = 1) -> float | None:
    """Outage start -> the fallback server is working. None when there is no fallback to move to."""
    s = servers(params, reg)
    if len(s) < 2 or not any(t.register for t in s[1:]):
        return None
    primary = s[0]
    return refresh_interval(primary.expires, primary.overlap) + primary.transaction_timeout + DETECTION_SLACK


def recovery_max(params: dict[str, str], reg: int = 1, dns_ttl: float = 0.0) -> float | None:
    """Restore -> the primary is working again, following the failback mode where the firmware has one."""
    s = servers(params, reg)
    if not s:
        return None
    p = s[0]
    base = p.retry_interval + p.transaction_timeout + DETECTION_SLACK
    if p.failback_mode == "duration":
        return max(base, p.failback_timeout + DETECTION_SLACK)
    if p.failback_mode == "DNSTTL":
        return base + dns_ttl
    return base  # newRequests, registration: as soon as the primary's registration succeeds again (R4)
