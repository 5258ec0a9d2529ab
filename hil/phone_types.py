"""What a virtual phone is: its models, its spec, and the state of its registrations (shared by its parts)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sipwire.endpoint import TransactionTimers



# Models and what they offer. SoundPoint (SIP 2.x-4.x): no REST. VVX (UC Software 5+): REST.
MODELS = {
    "SoundPoint IP 650": {"rest": False, "firmware": "3.1.8.0070", "lines": 6},
    "SoundPoint IP 550": {"rest": False, "firmware": "3.1.8.0070", "lines": 4},
    "SoundPoint IP 331": {"rest": False, "firmware": "3.1.8.0070", "lines": 2},
    "VVX 410": {"rest": True, "firmware": "5.9.7.3480", "lines": 12},
}

UP, DOWN, OFF = "registered", "unregistered", "not-registering"
# lab faults, taking effect at a phone's next boot: it never comes back; it ignores server 1; it ignores server 1 once
FAULTS = ("never-return", "wrong-server", "bad-boot-once")


@dataclass
class PhoneSpec:
    mac: str
    model: str
    ip: str
    boot_url: str                       # http://user:pass@host:port/dir/ or ftp://...
    sip_port: int = 5060
    http_port: int = 8080
    dns: tuple[str, int] | None = None
    admin_user: str = "Polycom"
    admin_password: str = "456"
    boot_time: float = 2.0
    boot_jitter: float = 1.0
    http_latency: float = 0.0
    # lab faults: a phone that never comes back after a reboot, or that ignores server 1 after reboot
    fault: str | None = None


@dataclass
class ServerBinding:
    reg: int
    index: int
    address: str
    port: int
    register: bool
    expires: int
    overlap: int
    timers: TransactionTimers
    retry_interval: float
    state: str = DOWN
    call_id: str = ""
    cseq: int = 0
    granted: int = 0
    task: asyncio.Task | None = None
    last_refresh_due: float | None = None


@dataclass
class Registration:
    index: int
    user: str
    auth_user: str
    password: str
    servers: list[ServerBinding] = field(default_factory=list)
    working: int | None = None
    subscribed_to_primary: bool = False
