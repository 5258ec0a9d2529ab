"""What a virtual phone is: its models, its spec, and the state of its registrations (shared by its parts)."""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from sipwire.endpoint import TransactionTimers

from soundpoint import families
from soundpoint.timing import rfc5626_wait


# Models and what they offer. SoundPoint (SIP 2.x-4.x): no REST. VVX (UC Software 5+): REST.
MODELS = {
    "SoundPoint IP 650": {"rest": False, "firmware": "3.1.8.0070", "lines": 6},
    "SoundPoint IP 550": {"rest": False, "firmware": "3.1.8.0070", "lines": 4},
    "SoundPoint IP 331": {"rest": False, "firmware": "3.1.8.0070", "lines": 2},
    "VVX 410": {"rest": True, "firmware": "5.9.7.3480", "lines": 12},
}

# The application version a phone of each family reports (User-Agent, state polling's AppLoadID): typical
# releases of each line, for show only.
FIRMWARE = {"sip-2.x": "2.2.2.0047", "sip-3.x": "3.1.8.0070", "uc-4.0": "4.0.15.1009", "uc-5.x": "5.9.7.3480"}


def model_info(model: str, family: str, version: str = "") -> dict:
    """What a phone of `model` offers when it runs `family` at `version` (default: the family's typical release):
    REST only where the family has it and from UC Software 5.4 (rdbahm/Posh-UCS README)."""
    from soundpoint.conformance import version_in

    info = dict(MODELS[model])
    fam = families.get(family)
    firmware = version or FIRMWARE.get(fam.name, info["firmware"])
    info.update(firmware=firmware, rest=fam.rest and version_in(firmware, ">=5.4"))
    return info


UP, DOWN, OFF = "registered", "unregistered", "not-registering"
# lab faults, taking effect at a phone's next boot: it never comes back; it ignores server 1; it ignores server 1 once;
# it keeps no standby registration and falls back late (LATE_FAILOVER_S after losing server 1); it hangs (answers
# nothing, sends nothing: hil.phone_power) once booted, or at once when set through the lab's /fault, until its power
# is cycled
FAULTS = ("never-return", "wrong-server", "bad-boot-once", "late-failover", "hung")
LATE_FAILOVER_S = 12.0


def set_fault(phones, body: dict) -> tuple[dict, int]:
    """The lab's /fault request: make one phone misbehave from its next boot; (answer, HTTP status)."""
    phone = next((p for p in phones if p.mac == str(body.get("mac", "")).lower()), None)
    if phone is None:
        return {"error": "no such phone"}, 404
    if body.get("fault") not in (None, *FAULTS):
        return {"error": "unknown fault"}, 400
    phone.spec.fault = body.get("fault")
    if phone.spec.fault == "hung" and phone.booted.is_set():
        phone.hang()        # a hang strikes now, not at the next boot
    return {"ok": True}, 200


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
    late_failover_s: float = LATE_FAILOVER_S    # the fault `late-failover`: server 1 down this long before a fallback
    # the firmware it runs (soundpoint.families), and on a family without registerRetry.* (SIP 2.x/3.x,
    # UC Software 4.0) the fixed interval at which it retries a failed registration (the seed: 30 to 60 s)
    family: str = "sip-3.x"
    fixed_retry: float = 30.0
    # UC Software with failOver.reRegisterOn=1 on a fallback: the guides read both ways (polycom.md "Failover model"):
    # "concurrent" registers with it from boot (TB 5844), "on-failure" only once every server before it has failed
    failover_behaviour: str = "concurrent"
    # voIpProt.SIP.requestValidation by source, read two ways (hil.phone_inbound): "configured" accepts every
    # configured registration server (the guides), "primary" only reg.x.server.1 (operators' reports)
    source_validation: str = "configured"
    firmware_version: str = ""          # "" : the family's typical release (FIRMWARE)

    @property
    def profile(self) -> families.Family:
        return families.get(self.family)


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
    retry_interval: float               # the fixed retry, or registerRetry.baseTimeOut with backoff
    state: str = DOWN
    call_id: str = ""
    cseq: int = 0
    granted: int = 0
    task: asyncio.Task | None = None
    last_refresh_due: float | None = None
    backoff: bool = False               # UC Software: waits grow from retry_interval to retry_max
    retry_max: float = 0.0
    failures: int = 0                   # consecutive failed registrations
    re_register: bool = True            # failOver.reRegisterOn (UC Software; a fallback needs 1 to register)
    only_signal_with_registered: bool = False
    fail_registration_on: bool = False
    proxy: tuple[str, int] | None = None   # the outbound proxy (name or address, port) its requests go to, if any
    # located by RFC 3263 (NAPTR, SRV, A): transport DNSnaptr (the default), a name, and port 0 or Null (the guides'
    # voIpProt.server.x.transport row); otherwise the name's A record at `port`
    locate: bool = False

    def next_retry(self, rng: random.Random | None = None) -> float:
        """Seconds until the next attempt after `failures` consecutive failures.

        Fixed interval on families without registerRetry.*; on UC Software RFC 5626 section 4.5 (the algorithm
        the guides name): nominal min(maxTimeOut, baseTimeOut x 2^failures), each wait 50-100 % of it
        (soundpoint.timing, which fleet.phoneconf.predict bounds with)."""
        if not self.backoff:
            return self.retry_interval
        nominal = rfc5626_wait(self.retry_interval, self.retry_max, self.failures)
        return nominal * (rng or random).uniform(0.5, 1.0)


FAILBACK_MODES = ("newRequests", "DNSTTL", "registration", "duration")


@dataclass
class Failback:
    """When a registration that failed over from its primary may make the primary its working server again
    (failOver.failBack.mode and .timeout of server 1, UC Software 4.1.6+; fleet.phoneconf.predict bounds the same modes).

    newRequests (the default, and every family without the parameter): no hold, the primary is retried at its
    own cadence and is working again as soon as it registers (R4), exactly as before modes existed. The other
    modes hold the primary: while a fallback is working after a failover from the primary, the phone sends the
    primary nothing until the mode says so (DNSTTL: the TTL of the working server's DNS answer, or of the
    primary's when the working server is an address; registration: the working server's next renewal;
    duration: `timeout` s after the fallback started working, never with 0). Holding the REGISTER, not only
    the choice of server, keeps what an observer sees on the wire true to the working server. A failover on
    the working fallback itself ends the hold: the primary is retried at its own cadence again.
    """
    mode: str = "newRequests"
    timeout: int = 3600
    after_failover: bool = False        # the primary was working and stopped: a fallback taking over is held
    held_since: float | None = None     # monotonic: when the current fallback started working (holding)
    due_at: float | None = None         # monotonic: when the hold ends by time (None: not by time)
    due: bool = False                   # the hold has ended (time passed, or the working server's renewal began)
    wake: asyncio.Event = field(default_factory=asyncio.Event)   # the primary's loop: stop waiting now

    @property
    def follows(self) -> bool:
        """Whether this registration's failback differs from newRequests at all."""
        return self.mode != "newRequests"

    def holding(self, now: float) -> bool:
        if self.held_since is None or self.due:
            return False
        if self.due_at is not None and now >= self.due_at:
            self.due = True
            return False
        return True

    def start_hold(self, now: float, wait: float | None) -> None:
        """A fallback started working after a failover from the primary; `wait`: seconds until the primary may
        be tried (None: not by time; a registration-mode hold ends at a renewal, a duration 0 hold never)."""
        self.held_since, self.due, self.due_at = now, False, (now + wait if wait is not None else None)

    def end_hold(self, wake: bool = True) -> None:
        """No hold any more; `wake`: the primary's loop, if waiting, tries the primary now."""
        self.held_since, self.due_at, self.due = None, None, False
        if wake:
            self.wake.set()

    def renewal(self) -> None:
        """The working fallback's registration renewal begins: in `registration` mode the hold ends now."""
        if self.mode == "registration" and self.held_since is not None and not self.due:
            self.due = True
            self.wake.set()


@dataclass
class Registration:
    index: int
    user: str
    auth_user: str
    password: str
    servers: list[ServerBinding] = field(default_factory=list)
    working: int | None = None
    subscribed_to_primary: bool = False
    failback: Failback = field(default_factory=Failback)
    # set whenever a server's registration succeeds or fails: fallbacks standing by (on-failure) look again
    standby_wake: asyncio.Event = field(default_factory=asyncio.Event)
