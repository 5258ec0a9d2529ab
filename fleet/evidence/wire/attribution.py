"""REGISTER outcomes -> per-phone, per-server observations, attributed by where the phone sent them.

Which server a REGISTER was for follows from its destination address and
port: the address the phone's configuration resolves to (server 1 is usually
the provider's name, resolved by DNS; server 2 the gateway's address). A server
the phone reaches through an outbound proxy has the proxy's address instead;
where several servers share a destination that way, the Request-URI's host
(the server's configured address) says which one the request is for, and the
proxy's own relayed leg (sent from the proxy's address) is nobody's. Which
phone sent it follows from the registration's user (To/From/Contact user),
because several phones may sit behind one address (NAT at the capture point,
or a soft phone beside a desk phone), and where that is not enough, from the
phone's own address. When the evidence fits no target or more than one, no
observation is made: a guess would be worse than a gap.

Who sent it is checked too (issue 17): anyone on a site's LAN can send a REGISTER with a phone's user in
it, so a request counts for a phone only when its source address is the phone's (the inventory's address, or
what its host name resolves to) or one the inventory allows for it (`WireTarget.allowed`: the phone's and the
site's `allow_from`, e.g. the NAT in front of several phones). A request whose user or destination names a
phone but that comes from anywhere else is "foreign": counted per source address (`Attribution.foreign`,
shown by `fleet status` and the report), never an observation. A target without any address (`phone_ip` ""
and nothing allowed: hand-built targets only; the collector always gives one) is not checked.

A phone that moved (DHCP gave it another address than the inventory's) is learned from its own registration,
but only from one the server authenticated for this very exchange: the server challenged the request's
Call-ID, the next request answered with credentials whose username is the phone's registration user, and the
server accepted it (2xx). A fresh challenge means a replayed Authorization cannot pass, and a 2xx alone proves
nothing (an open registrar accepts anyone; a lax one may take another line's credentials for this AoR, hence
the username check). The address is then the phone's until that registration's expiry (extended by its
accepted refreshes from there); `Attribution.learned` keeps it across rebuilds of the targets.

Phones that register over TLS, or over TCP (TCPOnly, TCPpreferred), cannot be
seen by a capture (it decodes UDP only; HEP from the SIP server carries TCP
too): they are reported "not observable on the wire" instead of being guessed
from silence.

The status code and the granted expiry are the Observation's `code` and
`expires`; `detail` repeats them as ``code=NNN expires=SSS`` tokens for
people reading a report (`detail_fields` parses them).
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fleet.state.observe import REGISTERED, UNREGISTERED, Observation
from fleet.evidence.wire.transactions import (CHALLENGE_CODES, FINAL, T1_TIMEOUT, TIMEOUT, RegisterOutcome, RegisterRequest,
                               host_key)

NOT_OBSERVABLE = "not observable on the wire"
UNMATCHED_KEPT = 1024      # distinct unmatched (destination, user) keys one Attribution lists
# the phone's reg.x.server.y.transport -> what goes on the wire (TCPpreferred: TCP wherever the server takes it)
TRANSPORT_KIND = {"tls": "tls", "tcponly": "tcp", "tcppreferred": "tcp"}
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
# transports with which a name and port 0 are looked up as RFC 3263 says (NAPTR, SRV, then A)
SRV_TRANSPORTS = ("", "dnsnaptr", "udponly")


@dataclass(frozen=True, slots=True)
class WireTarget:
    """One configured server of one registration of one phone, as it appears on the wire."""
    mac: str
    reg: int
    server: int
    address: tuple[str, int]        # resolved destination IP and port
    user: str = ""                  # registration user (reg.x.address / auth user); "" matches any
    transport: str = "udp"          # udp, tcp, tls
    phone_ip: str = ""              # the phone's source address as the capture sees it; "" matches any
    uri_host: str = ""              # the host the phone puts in the Request-URI (the configured server address,
                                    # as sip_transactions.host_key spells it); "" matches any
    allowed: tuple[str, ...] = ()   # other source addresses or networks (CIDR) the inventory accepts this phone's
                                    # REGISTERs from: a NAT in front of it, its DHCP network, its name's other addresses
    expires: int = 3600             # the expiry the phone asks for (reg.x.server.y.expires, Polycom's default 3600):
                                    # the longest an address learned from its registration is believed

    @property
    def observable(self) -> bool:
        """Whether a capture (router or mirror port: UDP decoded only) can see this target's REGISTERs."""
        return self.observable_by("wire")

    def observable_by(self, source: str) -> bool:
        """Whether evidence source `source` can see this target's REGISTERs: a capture ("wire") decodes UDP
        only; HEP from the SIP server ("hep") carries UDP and TCP alike. TLS (or port 5061) is encrypted on the
        wire, and treated as unseen by every source."""
        kind = self.transport.lower()
        if kind in ("tls", "sips", "wss") or self.address[1] == 5061:
            return False
        return kind == "udp" or (source == "hep" and kind == "tcp")

    def unseen_why(self, source: str = "wire") -> str:
        """Why `source` cannot see this target (empty when it can)."""
        if self.observable_by(source):
            return ""
        kind = self.transport.lower()
        if kind in ("tls", "sips", "wss") or self.address[1] == 5061:
            return "registers over TLS (encrypted)"
        return "registers over TCP (a capture decodes UDP only; HEP from the SIP server would show it)"


@dataclass(frozen=True, slots=True)
class Unobservable:
    mac: str
    reg: int
    server: int
    address: tuple[str, int]
    reason: str = NOT_OBSERVABLE
    why: str = ""                   # the transport that hides it, for people: "registers over TLS (encrypted)"

    def to_dict(self) -> dict:
        return {"mac": self.mac, "reg": self.reg, "server": self.server,
                "address": f"{self.address[0]}:{self.address[1]}", "reason": self.reason, "why": self.why}


def _canonical(address: tuple[str, int]) -> tuple[str, int]:
    """The address as decoders print it (IPv6 compressed, lower case), so an inventory's spelling matches."""
    try:
        return (str(ipaddress.ip_address(address[0])), int(address[1]))
    except ValueError:
        raise ValueError(f"wire target address {address[0]!r} is not an IP address: resolve names first") from None


def targets_for(mac: str, reg: int, user: str, servers: Iterable[Mapping], resolve: Callable[[str], list[str]],
                phone_ip: str = "") -> list[WireTarget]:
    """The wire targets of one registration from its configured servers (dicts with index, address, and
    optionally port, transport, register, proxy), the way the phone resolves them: a name through `resolve`
    (every address it returns is a target: the phone may use any of them), port 0/None meaning 5060 (5061 for
    TLS). A server with a `proxy` ({address, port, transport}: the outbound proxy it uses) is reached at the
    proxy's address, port and transport instead; its Request-URI still names the server (`uri_host`).
    Servers with register=0 get no REGISTER (R5) and so no target. TLS, TCPOnly and TCPpreferred servers give
    targets that a capture cannot see (`Attribution.unobservable` reports them instead of matching).
    A name with port 0 and transport DNSnaptr (the default) or UDPOnly is located as the phone does (NAPTR,
    SRV, then A with 5060) where `resolve` has a `locate(name, transport) -> [(ip, port, kind)]` method
    (sources.resolver.SiteResolver); a plain function only gives addresses, reached at the default port."""
    out: list[WireTarget] = []
    for s in servers:
        if not s.get("register", True) or str(s.get("register", "1")) == "0":
            continue
        hop = s.get("proxy") or s
        transport = str(hop.get("transport") or "").lower()
        kind = TRANSPORT_KIND.get(transport, "udp")
        port = int(hop.get("port") or 0)
        address = str(hop["address"])
        try:
            found = [(str(ipaddress.ip_address(address.strip("[]"))), port or DEFAULT_PORT[kind], kind)]
        except ValueError:
            locate = getattr(resolve, "locate", None)
            if port == 0 and transport in SRV_TRANSPORTS and locate is not None:
                found = list(locate(address, transport))
            else:
                found = [(ip, port or DEFAULT_PORT[kind], kind) for ip in resolve(address)]
        expires = int(s.get("expires") or 3600)
        for ip, p, k in found:
            out.append(WireTarget(mac=mac, reg=reg, server=int(s["index"]), address=(ip, int(p)), user=user,
                                  transport=k, phone_ip=phone_ip, uri_host=host_key(str(s["address"])),
                                  expires=expires))
    return out


FOREIGN_KEPT = 256         # distinct foreign source addresses counted one by one; the rest add up under "other"
LEARNED_KEPT = 4096        # (phone, address) pairs learned from authenticated registrations
LEARN_GRACE = T1_TIMEOUT   # a learned address stays the phone's this long past the expiry it was granted


class SenderCheck:
    """Whether a source address may speak for a target: the phone's own address, or one its `allowed` covers.
    Networks are parsed once per target and source addresses once each (bounded), so a flood from many
    addresses costs a dict lookup per packet after the first."""

    def __init__(self) -> None:
        self._nets: dict[tuple[str, ...], list] = {}
        self._ips: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {}

    def admits(self, target: WireTarget, src_ip: str) -> bool:
        if src_ip == target.phone_ip or (not target.phone_ip and not target.allowed):
            return True
        if not target.allowed:
            return False
        nets = self._nets.get(target.allowed)
        if nets is None:
            nets = self._nets[target.allowed] = _networks(target.allowed)
        ip = self._ips.get(src_ip, False)
        if ip is False:
            try:
                ip = ipaddress.ip_address(src_ip.split("%", 1)[0])
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
            except ValueError:
                ip = None
            if len(self._ips) >= 4096:
                self._ips.clear()
            self._ips[src_ip] = ip
        return ip is not None and any(ip.version == n.version and ip in n for n in nets)


def _networks(allowed: Iterable[str]) -> list:
    """The networks of an `allowed` list; an entry that is none is skipped (the inventory validated them: this
    only keeps a bad resolver answer from taking a source down)."""
    out = []
    for entry in allowed:
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return out


def foreign_counts(foreign: Counter) -> dict[str, int]:
    """A copy of a foreign counter another thread may be adding to (for the collector's report)."""
    for _ in range(3):
        try:
            return dict(foreign)
        except RuntimeError:        # changed size while copied: try again
            continue
    return {}


def count_foreign(foreign: Counter, src_ip: str) -> None:
    """One more foreign message from `src_ip` (bounded: past FOREIGN_KEPT addresses they add up under "other")."""
    key = src_ip if src_ip in foreign or len(foreign) < FOREIGN_KEPT else "other"
    foreign[key] += 1


class Attribution:
    """Finds the target a REGISTER belongs to. Built once from the inventory, read per packet."""

    def __init__(self, targets: Iterable[WireTarget], source: str = "wire", foreign: Counter | None = None,
                 learned: dict[tuple[str, str], float] | None = None) -> None:
        """`source`: who reads the packets ("wire" for a capture, "hep"), which decides what it can see.
        `foreign` and `learned`: the counter of foreign messages per source address and the addresses learned
        from authenticated registrations to go on with (the previous Attribution's, when the targets are
        rebuilt), else new ones."""
        self.targets = list(targets)
        self.senders = SenderCheck()
        self.foreign: Counter[str] = foreign if foreign is not None else Counter()
        self.learned: dict[tuple[str, str], float] = learned if learned is not None else {}   # (mac, ip) -> until
        self.source = source
        self._by_addr: dict[tuple[str, int], list[WireTarget]] = {}
        self._by_user: dict[tuple[str, int, str], list[WireTarget]] = {}
        self._wild: dict[tuple[str, int], list[WireTarget]] = {}
        self._servers: set[tuple[str, int]] = set()
        for t in self.targets:
            if not t.observable_by(source):
                continue
            addr = _canonical(t.address)
            self._servers.add(addr)
            self._by_addr.setdefault(addr, []).append(t)
            if t.user:
                self._by_user.setdefault((*addr, t.user), []).append(t)
            else:
                self._wild.setdefault(addr, []).append(t)
        self.stats: Counter[str] = Counter()
        # (destination, user) of REGISTERs no target fitted, each once, in the order seen (appended on the
        # pipeline's thread, read by a Follower on another: a list only grows, so a slice is safe to take)
        self.unmatched: list[tuple] = []
        self._unmatched_seen: set[tuple] = set()

    @classmethod
    def from_map(cls, mapping: Mapping[tuple[str, int], tuple[str, int, int]]) -> "Attribution":
        """The simplest form: one phone per destination {(ip, port): (mac, reg, server index)}."""
        return cls(WireTarget(mac=v[0], reg=v[1], server=v[2], address=(k[0], int(k[1]))) for k, v in mapping.items())

    def unobservable(self) -> list[Unobservable]:
        """The targets this source cannot see, each with why (its transport)."""
        return [Unobservable(t.mac, t.reg, t.server, t.address, why=t.unseen_why(self.source))
                for t in self.targets if not t.observable_by(self.source)]

    def lookup(self, req: RegisterRequest, outcome: RegisterOutcome | None = None) -> WireTarget | None:
        """The one target this REGISTER is for, or None (counted in `stats`) when none or several fit.

        A request sent from a target's own address and port is a server's (an outbound proxy relaying a
        phone's request upstream), never a phone's: it is counted `relayed` and attributed to nobody, so the
        phone's request and the relayed copy never count twice. Otherwise the candidates are the targets at
        the destination whose user is one of the request's To, From or Contact users (else those configured
        without a user, and only from that phone's own address where the target has one: a phone whose
        registration user is unknown must not take another phone's line, or the gateway's own trunk
        REGISTER); where several remain (servers sharing an outbound proxy), those whose Request-URI host
        is the request's; among several, the phone's own address breaks ties. A request whose user fits targets
        none of which admits its source address (`SenderCheck`), nor learned it (`outcome`: how the request
        ended, which may teach it; see the module's docstring), is foreign: counted, attributed to nobody."""
        if req.src in self._servers:
            self.stats["relayed"] += 1
            return None
        if req.dst not in self._by_addr:
            self.stats["unknown_destination"] += 1
            self._unmatched(req)
            return None
        matched: list[WireTarget] = []
        for u in (req.aor_user, req.from_user, req.contact_user):
            if u:
                for t in self._by_user.get((*req.dst, u), ()):
                    if t not in matched:
                        matched.append(t)
        if matched:
            admitted = [t for t in matched if self.senders.admits(t, req.src[0])]
            if not admitted:
                admitted = self._learn(matched, req, outcome)
            if not admitted:
                self.stats["foreign"] += 1
                count_foreign(self.foreign, req.src[0])
                return None
            matched = admitted
        else:
            matched = [t for t in self._wild.get(req.dst, ()) if self.senders.admits(t, req.src[0])]
        if len(matched) > 1 and req.uri_host and any(t.uri_host for t in matched):
            matched = [t for t in matched if t.uri_host in ("", req.uri_host)]
        if len(matched) > 1:
            by_ip = [t for t in matched if t.phone_ip and t.phone_ip == req.src[0]]
            if by_ip:
                matched = by_ip
        if len(matched) == 1:
            return matched[0]
        self.stats["ambiguous" if matched else "no_matching_phone"] += 1
        if not matched:
            self._unmatched(req)
        return None

    def _learn(self, matched: list[WireTarget], req: RegisterRequest, outcome: RegisterOutcome | None
               ) -> list[WireTarget]:
        """The targets that learned the request's source address: before (still valid at the request's time), or
        now from an authenticated registration (then remembered until its expiry plus LEARN_GRACE). The 2xx came
        from the request's destination (RegisterMatcher accepts no other answer); the expiry believed is the one
        granted but never more than the phone's own configured expiry (`WireTarget.expires`: a registrar may
        shorten what a phone asks for, never lengthen it), so a forged or odd `expires` cannot pin an address."""
        src = req.src[0]
        known = [t for t in matched if self.learned.get((t.mac, src), float("-inf")) >= req.t]
        accepted = (outcome is not None and outcome.kind == FINAL and outcome.code is not None
                    and 200 <= outcome.code < 300 and req.has_credentials)
        owners = known or [t for t in matched if accepted and outcome.after_challenge in CHALLENGE_CODES
                           and t.user and req.auth_user == t.user]
        if len({t.mac for t in owners}) != 1:
            return []
        if accepted and req.auth_user == owners[0].user:      # learned, or an accepted refresh from there
            if len(self.learned) >= LEARNED_KEPT and (owners[0].mac, src) not in self.learned:
                held = list(self.learned.items())      # one C-level copy: another source's thread may add meanwhile
                for key in [k for k, until in held if until < req.t] or [held[0][0]]:
                    self.learned.pop(key, None)
            granted = min(outcome.granted_expires or 0, owners[0].expires)    # type: ignore[union-attr]
            until = outcome.t + granted + LEARN_GRACE      # type: ignore[union-attr]
            self.learned[(owners[0].mac, src)] = max(until, self.learned.get((owners[0].mac, src), until))
            self.stats["learned" if not known else "learned_refreshed"] += 1
        return owners

    def _unmatched(self, req: RegisterRequest) -> None:
        key = (req.dst, req.aor_user or req.from_user or req.contact_user)
        if key not in self._unmatched_seen and len(self.unmatched) < UNMATCHED_KEPT:
            self._unmatched_seen.add(key)
            self.unmatched.append(key)


def observation(outcome: RegisterOutcome, target: WireTarget, source: str = "wire") -> Observation | None:
    """The observation one outcome gives about `target`'s server; None for a challenge in progress."""
    addr = f"{target.address[0]}:{target.address[1]}"
    base = dict(mac=target.mac, t=outcome.t, source=source, reg=target.reg, server=target.server, address=addr)
    if outcome.kind == TIMEOUT:
        return Observation(**base, state=UNREGISTERED,
                           detail=f"no answer within {outcome.t - outcome.request.t:g}s "
                                  f"retransmissions={outcome.retransmissions}")
    if outcome.kind != FINAL or outcome.code is None or outcome.code in CHALLENGE_CODES:
        return None         # a challenge says nothing about the binding: anyone can draw one with one packet
    code = outcome.code
    if 200 <= code < 300:
        if outcome.unregister:
            return Observation(**base, state=UNREGISTERED, detail=f"unregistered code={code} expires=0",
                               code=code, expires=0)
        expires = outcome.granted_expires
        detail = f"registered code={code}" + (f" expires={expires}" if expires is not None else "")
        if outcome.after_challenge:
            detail += f" after-challenge={outcome.after_challenge}"
        return Observation(**base, state=REGISTERED, detail=detail, code=code, expires=expires,
                           sent=outcome.request.t)
    return Observation(**base, state=UNREGISTERED, detail=f"refused code={code}", code=code)


def detail_fields(detail: str) -> dict[str, str]:
    """`code=200 expires=3600` tokens of a wire observation's detail, as a dict."""
    out: dict[str, str] = {}
    for token in detail.split():
        k, eq, v = token.partition("=")
        if eq:
            out[k] = v
    return out


class ObservationBuilder:
    """Outcome -> observation with attribution; counts what could not be attributed."""

    def __init__(self, attribution: Attribution, source: str = "wire") -> None:
        self.attribution = attribution
        self.source = source

    def __call__(self, outcome: RegisterOutcome) -> Observation | None:
        target = self.attribution.lookup(outcome.request, outcome)
        if target is None:
            return None
        return observation(outcome, target, self.source)

    def call(self, outcome) -> Observation | None:
        """A call observation (sip_calls.CallOutcome): the server at the INVITE's destination answered it."""
        target = self.attribution.lookup(outcome.request)
        if target is None:
            return None
        return Observation(mac=target.mac, t=outcome.t, source=self.source, reg=target.reg, server=target.server,
                           address=f"{target.address[0]}:{target.address[1]}", kind="call", code=outcome.code,
                           detail=f"call to {outcome.dialled} answered {outcome.code}")
