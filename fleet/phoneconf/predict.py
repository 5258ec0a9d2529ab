"""Predicted worst-case failover and recovery times, from a phone's configuration and its firmware family.

A phone notices a dead primary only when it next talks to it: at its refresh
(`overlap` s before the expiry the server *granted*, or at half of it when the
grant itself is below the overlap: soundpoint.timing), plus the time the REGISTER transaction takes to fail (RFC 3261
Timer F = 32 s, or retryTimeOut x (retryMaxCount + 1) with Polycom's
overrides). After the WAN returns, the phone retries the primary: at a fixed
interval on SIP 2.x/3.x (the seed's "typically 30 to 60 seconds"), with a
randomised backoff from `registerRetry.baseTimeOut` to `maxTimeOut` on UC
Software. How soon it then treats the primary as working again depends on the
firmware's failback mode, where the family has one.

Which server attributes apply (confirmed in the guides): once
`reg.x.server.y.address` is set, that server's `reg.x.server.y.*` values are
used as a whole; `voIpProt.server.y.*` applies only to a server whose
`reg.x.server.y.address` is empty.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from soundpoint import families
from soundpoint.timing import refresh_interval, rfc5626_wait  # noqa: F401  (refresh_interval: fleet.rollout.plan)

DETECTION_SLACK = 1.0   # seconds: syslog/event delivery and the resolver's own timeout budget
RFC3261_TIMER_F = 32.0  # 64 x T1 (500 ms): a REGISTER with retryTimeOut 0/null gives up after this


@dataclass(frozen=True)
class Term:
    """One addend of a bound: what it is, its seconds, and the configuration (or grant) it comes from."""
    name: str
    seconds: float
    source: str

    def text(self) -> str:
        return f"{self.name} {self.seconds:g} s ({self.source})"


@dataclass(frozen=True)
class Derivation:
    """How a bound was reached, so an operator can check it against the phone's configuration: the bound is the
    largest of `paths`, each a sum of terms (one path for most bounds; a failback mode that waits for something
    else too adds a second). The terms are summed in the order the bound always was, so `seconds` is the bound
    to the last bit."""
    paths: tuple[tuple[Term, ...], ...]

    @property
    def seconds(self) -> float:
        return max(_total(path) for path in self.paths)

    def text(self) -> str:
        """e.g. "refresh 5 s (granted expires 10 s - overlap 5 s) + transaction timeout 1.6 s (retryTimeOut 400 ms
        x (retryMaxCount 3 + 1)) + detection slack 1 s (evidence delivery) = 7.6 s"."""
        sums = [" + ".join(t.text() for t in path) + f" = {_total(path):g} s" for path in self.paths]
        if len(sums) == 1:
            return sums[0]
        return "the larger of " + " and ".join(f"[{s}]" for s in sums) + f": {self.seconds:g} s"

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "text": self.text(),
                "paths": [[{"term": t.name, "s": t.seconds, "from": t.source} for t in path] for path in self.paths]}


def _total(path: tuple[Term, ...]) -> float:
    total = 0.0
    for term in path:
        total += term.seconds
    return total


@dataclass(frozen=True)
class RetryModel:
    """How a family retries a failed registration, as far as the predictions need it.

    backoff False: a fixed interval, at most `fixed_max` s (SIP 2.x/3.x and UC Software 4.0 have no parameter
    for it: the seed's "typically 30 to 60 seconds").
    backoff True: the algorithm of RFC 5626 section 4.5, which the UC Software guides name for
    registerRetry.baseTimeOut/maxTimeOut: after n consecutive failures the wait is
    min(maxTimeOut, baseTimeOut x 2^n), then a random 50-100 % of it (UC Software 4.1.6+, i.e. the families
    with failover controls).
    """
    backoff: bool
    failover_controls: bool          # failOver.* (failBack.mode, reRegisterOn, onlySignalWithRegistered) exist
    fixed_max: float = 60.0
    base_default: int = 60
    max_default: int = 60


_FIXED = RetryModel(backoff=False, failover_controls=False)
_UC = RetryModel(backoff=True, failover_controls=True)


def retry_model(family: str | None) -> RetryModel:
    """The retry model of a firmware family (soundpoint.families); None or an unknown name: the seed's fixed interval."""
    if family is None:
        return _FIXED
    try:
        fam = families.get(family)
    except families.FamilyError:
        return _FIXED
    return _UC if fam.failover_controls else _FIXED


@dataclass(frozen=True)
class ServerTiming:
    index: int
    address: str
    register: bool                   # reg.x.server.y.register as configured
    expires: int                     # requested
    overlap: int
    transaction_timeout: float
    retry_interval: float            # fixed retry, or registerRetry.baseTimeOut on a backoff family
    failback_mode: str
    failback_timeout: int
    retry_max_count: int = 3
    retry_max: float = 0.0           # registerRetry.maxTimeOut on a backoff family; the fixed retry otherwise
    backoff: bool = False
    re_register: bool = True         # failOver.reRegisterOn (always True where the family has no such control)
    only_signal_with_registered: bool = False
    source: str = "reg"              # "reg": reg.x.server.y.*, "voIpProt": voIpProt.server.y.*
    retry_timeout_ms: int = 0        # retryTimeOut as configured (0: RFC 3261 Timer F), for the derivation
    family: str | None = None

    def transaction_term(self, what: str = "transaction timeout") -> Term:
        """Its REGISTER transaction's time to fail, and why."""
        if self.retry_timeout_ms:
            why = f"retryTimeOut {self.retry_timeout_ms} ms x (retryMaxCount {self.retry_max_count} + 1)"
        else:
            why = "RFC 3261 Timer F, retryTimeOut 0"
        return Term(what, self.transaction_timeout, f"server {self.index}: {why}")

    @property
    def registers(self) -> bool:
        """Whether the phone really sends this server a REGISTER: register=1, and on UC Software a fallback
        server (y >= 2) also needs failOver.reRegisterOn=1."""
        return self.register and (self.index == 1 or self.re_register)


def _attr_source(params: dict[str, str], reg: int, server: int) -> str | None:
    """Whole-server precedence: the prefix whose values this server uses, or None when it has no address."""
    if params.get(f"reg.{reg}.server.{server}.address", "") != "":
        return f"reg.{reg}.server.{server}."
    if params.get(f"voIpProt.server.{server}.address", "") != "":
        return f"voIpProt.server.{server}."
    return None


def _int(value: str, default: int) -> int:
    value = str(value).strip()
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else default


def server_timing(params: dict[str, str], reg: int, server: int, family: str | None = None) -> ServerTiming | None:
    prefix = _attr_source(params, reg, server)
    if prefix is None:
        return None
    model = retry_model(family)

    def get(attr: str, default: str) -> str:
        value = params.get(prefix + attr, "")
        return value if value != "" else default

    retry_ms = _int(get("retryTimeOut", "0"), 0)
    retry_count = _int(get("retryMaxCount", "3"), 3) or 3
    tx = retry_ms / 1000 * (retry_count + 1) if retry_ms else RFC3261_TIMER_F
    if model.backoff:
        base = float(_int(get("registerRetry.baseTimeOut", str(model.base_default)), model.base_default))
        top = float(max(_int(get("registerRetry.maxTimeOut", str(model.max_default)), model.max_default), base))
    elif family is None:
        # no family known (callers that predate the profiles): the configured retry, as a fixed interval
        base = top = float(_int(get("registerRetry.baseTimeOut", str(model.base_default)), model.base_default))
    else:
        base = top = model.fixed_max
    controls = model.failover_controls
    modes = controls or family is None      # no family known: follow a failback mode if one is configured
    return ServerTiming(
        index=server, address=get("address", ""), register=get("register", "1") != "0",
        expires=_int(get("expires", "3600"), 3600), overlap=_int(get("expires.overlap", "60"), 60),
        transaction_timeout=tx, retry_interval=base, retry_max=top, backoff=model.backoff,
        failback_mode=get("failOver.failBack.mode", "newRequests") if modes else "none",
        failback_timeout=_int(get("failOver.failBack.timeout", "3600"), 3600) if modes else 0,
        retry_max_count=retry_count,
        re_register=(get("failOver.reRegisterOn", "0") == "1") if controls else True,
        only_signal_with_registered=(get("failOver.onlySignalWithRegistered", "1") == "1") if controls else False,
        source="reg" if prefix.startswith("reg.") else "voIpProt", retry_timeout_ms=retry_ms, family=family)


def servers(params: dict[str, str], reg: int = 1, family: str | None = None) -> list[ServerTiming]:
    out = []
    for y in range(1, 10):
        t = server_timing(params, reg, y, family)
        if t:
            out.append(t)
    return out


def configured_servers(params: dict[str, str], reg: int = 1) -> list[dict]:
    """The servers of a registration as the store and `fleet status` list them."""
    return [{"index": t.index, "register": t.register, "address": t.address} for t in servers(params, reg)]


def granted_expiry(observations: list[dict], server: int = 1, before: float | None = None, reg: int = 1) -> int | None:
    """The expiry the server last granted registration `reg`, from the phone's observations, or None when
    nothing said (another line's grant is not this one's: its server may grant another expiry).

    Sources that see the grant: SIP on the wire and HEP (`expires` field, or `expires=N` in the detail) and the
    registration syslog line. Not the gateway's bindings: their expiry is the time left, not the grant."""
    found = None
    for o in observations:
        if before is not None and o.get("t", 0) > before:
            break
        if (o.get("server") != server or o.get("reg", 1) != reg or o.get("state") != "registered" or o.get("kind", "registration") != "registration"
                or o.get("source") == "gateway"):
            continue
        value = o.get("expires")
        if not isinstance(value, int) or isinstance(value, bool):
            m = re.search(r"\bexpires=([0-9]+)\b", str(o.get("detail", "")))
            value = int(m.group(1)) if m else None
        if value:
            found = value
    return found


def fallbacks_on_failure(params: dict[str, str], reg: int = 1, family: str | None = None) -> list[int]:
    """The fallback servers this phone may leave unregistered while server 1 works: register=1 with
    failOver.reRegisterOn=1 on a family that has the switch. The UC Software guides read both ways ("registers
    with it from boot", TB 5844, or "registers with it when server 1 fails"), so a verification that asks for
    them cannot demand a registration there while the primary holds (fleet.rollout.policy.registered)."""
    if not retry_model(family).failover_controls:
        return []
    return [t.index for t in servers(params, reg, family)[1:] if t.registers]


def moved_fallbacks(old: dict[str, str], new: dict[str, str], reg: int = 1, family: str | None = None) -> list[int]:
    """The on-failure fallbacks (fallbacks_on_failure of `new`) whose address or port `new` changes from `old`.

    Such a fallback may not be taken as a silent standby by a verification: the phone never registered with
    the new address, so silence there proves nothing (a wrong address times out, often unseen by the wire
    evidence, which attributes a REGISTER by the addresses it knows)."""
    def where(params: dict[str, str], y: int) -> tuple[str, str] | None:
        prefix = _attr_source(params, reg, y)
        return None if prefix is None else (params.get(prefix + "address", ""), params.get(prefix + "port", ""))

    return [y for y in fallbacks_on_failure(new, reg, family) if where(old, y) != where(new, y)]


def failover_problem(params: dict[str, str], reg: int = 1, family: str | None = None) -> str | None:
    """Why this phone cannot register with a fallback server, or None when it can."""
    s = servers(params, reg, family)
    if len(s) < 2:
        return "no fallback server configured (reg.1.server.2.address is empty)"
    if any(t.registers for t in s[1:]):
        return None
    if any(t.register and not t.re_register for t in s[1:]):
        return (f"on {family} a phone registers with a fallback server only with failOver.reRegisterOn=1 "
                f"(default 0: it assumes the servers share registrations); server 2 will not see a REGISTER")
    return "every fallback server has register=0: the phone never registers there"


def refresh_term(t: ServerTiming, granted: int | None, name: str = "refresh") -> Term:
    """When the phone next talks to server `t`: its refresh of the expiry granted (else the one configured)."""
    expires = granted if granted else t.expires
    said = f"{'granted' if granted else 'configured'} expires {expires} s"
    how = (f"half of {said}, below overlap {t.overlap} s" if expires < t.overlap
           else f"{said} - overlap {t.overlap} s")
    return Term(name, refresh_interval(expires, t.overlap), f"server {t.index}: {how}")


SLACK_TERM = Term("detection slack", DETECTION_SLACK, "evidence delivery and resolver budget")


def failover_derivation(params: dict[str, str], reg: int = 1, family: str | None = None,
                        granted: int | None = None) -> Derivation | None:
    """`failover_max` with its terms. None when the phone registers with no fallback."""
    s = servers(params, reg, family)
    fallbacks = [t for t in s[1:] if t.registers]
    if not s or not fallbacks:
        return None
    primary = s[0]
    terms = [refresh_term(primary, granted), primary.transaction_term(), SLACK_TERM]
    if retry_model(family).failover_controls:
        # the fallback's REGISTER may be sent only now (uncertain)
        terms.append(fallbacks[0].transaction_term("fallback's REGISTER"))
    return Derivation((tuple(terms),))


def failover_max(params: dict[str, str], reg: int = 1, family: str | None = None,
                 granted: int | None = None) -> float | None:
    """Outage start -> a fallback server is working. None when the phone registers with no fallback.

    granted: the expiry the primary granted (the phone refreshes on that, not on what it asked for)."""
    derivation = failover_derivation(params, reg, family, granted)
    return None if derivation is None else derivation.seconds


def retry_wait_bound(t: ServerTiming, outage_s: float | None = None) -> float:
    """The longest wait between two attempts at a failed server that can be in force when it returns.

    Fixed interval: the interval. Backoff (RFC 5626 section 4.5): the nominal wait after n >= 1 consecutive
    failures is min(max, base x 2^n); with the outage's length known, n is at most the failures that fit in it
    (each wait lasts at least half its nominal value), otherwise the maximum."""
    if not t.backoff:
        return t.retry_interval
    if outage_s is None:
        return t.retry_max
    elapsed, nominal = 0.0, min(rfc5626_wait(t.retry_interval, t.retry_max, 1), t.retry_max)
    while nominal < t.retry_max and elapsed + nominal / 2 <= outage_s:
        elapsed += nominal / 2
        nominal = min(nominal * 2, t.retry_max)
    return nominal


def retry_wait_term(t: ServerTiming, outage_s: float | None = None) -> Term:
    """`retry_wait_bound` with where it comes from."""
    wait = retry_wait_bound(t, outage_s)
    if not t.backoff:
        why = (f"fixed retry interval of {t.family}" if t.family else "registerRetry.baseTimeOut, as a fixed interval")
    else:
        why = (f"RFC 5626 backoff, registerRetry.baseTimeOut {t.retry_interval:g} s, maxTimeOut {t.retry_max:g} s"
               + (f", after a {outage_s:.1f} s outage" if outage_s is not None else ", outage length unknown"))
    return Term("retry wait", wait, f"server {t.index}: {why}")


@dataclass(frozen=True)
class RecoveryBound:
    """Restore -> primary working again: `seconds` None when no bound exists, with `reason` saying why;
    `derivation` its terms when it exists."""
    seconds: float | None
    reason: str = ""
    derivation: Derivation | None = None


def recovery_bound(params: dict[str, str], reg: int = 1, family: str | None = None, dns_ttl: float | None = None,
                   outage_s: float | None = None, fallback_granted: int | None = None) -> RecoveryBound:
    """Restore -> the primary is working again, following the family's retry model and failback mode.

    newRequests (and families without failback modes): the next retry of the primary succeeds.
    registration: the phone goes back at the next renewal of the registration it holds (the fallback's).
    duration: after failBack.timeout s; timeout 0 means it never goes back by itself (no bound).
    DNSTTL: after the DNS TTL of the primary's name, which must be known (`dns_ttl`).
    """
    s = servers(params, reg, family)
    if not s:
        return RecoveryBound(None, "no server configured")
    p = s[0]
    retry = (retry_wait_term(p, outage_s), p.transaction_term(), SLACK_TERM)
    mode = p.failback_mode

    def bound(*paths: tuple[Term, ...]) -> RecoveryBound:
        d = Derivation(paths)
        return RecoveryBound(d.seconds, derivation=d)

    if mode == "duration":
        if p.failback_timeout == 0:
            return RecoveryBound(None, "failOver.failBack.mode=duration with timeout 0: the phone never fails back "
                                       "to the primary by itself")
        return bound(retry, (Term("failback timeout", p.failback_timeout, "failOver.failBack.mode=duration, "
                                   "failOver.failBack.timeout"), SLACK_TERM))
    if mode == "DNSTTL":
        if dns_ttl is None:
            return RecoveryBound(None, "failOver.failBack.mode=DNSTTL but the primary's DNS TTL is unknown")
        return bound(retry + (Term("DNS TTL", dns_ttl, "failOver.failBack.mode=DNSTTL, the primary's name"),))
    if mode == "registration":
        fb = next((t for t in s[1:] if t.registers), None)
        if fb is None:
            return bound(retry)
        renew = (refresh_term(fb, fallback_granted, "fallback's renewal"), p.transaction_term(), SLACK_TERM)
        return bound(retry, renew)
    return bound(retry)   # newRequests, or a family without failback modes (R4)


def recovery_max(params: dict[str, str], reg: int = 1, dns_ttl: float | None = None, family: str | None = None,
                 outage_s: float | None = None, fallback_granted: int | None = None) -> float | None:
    """The bound of `recovery_bound` in seconds (None: no bound; see its reason)."""
    return recovery_bound(params, reg, family, dns_ttl, outage_s, fallback_granted).seconds


def in_flight_term(t: ServerTiming) -> Term:
    """A REGISTER to the primary sent just before the WAN came back: it fails only at its transaction timeout
    (RFC 3261 17.1.2.2, Timer F; retryTimeOut x (retryMaxCount + 1) with Polycom's overrides), and only then does
    the retry wait begin. A single long outage hides this term in its slack; a flap restores often enough to hit it."""
    return t.transaction_term("REGISTER in flight at the restore")


def flap_recovery_bound(params: dict[str, str], reg: int = 1, family: str | None = None,
                        dns_ttl: float | None = None, flap_s: float | None = None,
                        fallback_granted: int | None = None) -> RecoveryBound:
    """Last restore of a flapping WAN -> the primary is working again: the single-outage `recovery_bound` of the
    same failback mode, with two changes that flapping forces.

    1. The backoff has grown over the whole flap, not the last cut: RFC 5626 section 4.5 resets the count of
       consecutive failures only when a registration succeeds, and an up time shorter than the retry wait in force
       sees no attempt at all, so the failures of every cut add up. `flap_s` (first cut -> last restore) is the
       outage length the backoff is bounded with (None: unknown, the maximum wait).
    2. A REGISTER in flight at the restore (`in_flight_term`) fails first: every path starts with it. For
       `duration` this also covers the hold: the last failover (which starts failBack.timeout) happens at the latest
       when that transaction fails, so the hold ends by the restore + its timeout + failBack.timeout.

    `registration` (back at the fallback's next renewal) and `DNSTTL` (the TTL after the retry) keep their own
    terms; `duration` with timeout 0 and `DNSTTL` with the TTL unknown have no bound, as for one outage.
    """
    single = recovery_bound(params, reg, family, dns_ttl, flap_s, fallback_granted)
    if single.derivation is None:
        return single
    primary = servers(params, reg, family)[0]
    first = in_flight_term(primary)
    d = Derivation(tuple((first,) + path for path in single.derivation.paths))
    return RecoveryBound(d.seconds, derivation=d)
