"""What keeps one evidence source's input from stalling, blinding or skewing the collector.

Every host on a site's LAN can put packets in front of a capture, and whoever reaches the HEP port can send
datagrams; so each wire source gets:

- `ByteBudget`: a per-source token bucket on the bytes it decodes, each message charged a fixed cost too.
  Decoding is linear and capped (wire_sip's size caps, sipwire.uri), so a budget bounds the CPU one source can
  take per second, whether it is flooded with large messages or with many tiny ones: a flood on one source is
  dropped (counted) there and never starves the others or the collector's event loop.
- `ClockGuard`: packet times judged against this host's clock by the offset most recent packets agree on.
  A packet whose offset is far from that consensus (a datagram stamped a day ahead, a router whose clock
  stepped back) is dropped and counted, so no single packet moves the source's clock; a lasting step (NTP
  corrected the router) becomes the consensus after a few packets and is followed. `max_skew` also bounds the
  offset itself (HEP agents are SIP servers, expected to run NTP).
- `DropHealth`: how much of what a source got it dropped lately; mostly dropping is a failing source
  (`fleet status` shows it as failing, with the reasons), not a quiet healthy one.
- `SenderClocks`, `SenderDrops`: the same per sender address, for a source several agents send to (HEP from
  each of a site's SIP servers): each server's clock is its own (two servers 20 s apart must not make one of
  them the other's outlier), and one sender whose datagrams are mostly dropped shows the source as failing
  even while another sender's traffic is fine. Both hold at most `max_senders` senders.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter, deque


class ByteBudget:
    """Token bucket: `rate` bytes per second, up to `burst` at once. `take(n)` is False when over budget.

    Each message also costs `per_message` bytes on top of its own: decoding has a fixed cost per message
    (parsing, matching) besides the cost per byte, so a budget in bytes alone would let a flood of tiny
    messages take many times the CPU the same bytes in large ones do."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic, per_message: int = 0) -> None:
        if rate <= 0 or burst <= 0 or per_message < 0:
            raise ValueError("a byte budget needs a positive rate and burst, and no negative cost per message")
        self.rate, self.burst, self._clock = rate, burst, clock
        self.per_message = per_message
        self._tokens = burst
        self._at = clock()

    def take(self, n: int) -> bool:
        """Charge one message of `n` bytes (plus `per_message`); False, and nothing charged, when over budget."""
        cost = n + self.per_message
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if cost > self._tokens:
            return False
        self._tokens -= cost
        return True


CLOCK_AHEAD, CLOCK_BEHIND = "clock_ahead", "clock_behind"


class ClockGuard:
    """Judges each packet time `t` against local wall time `now` (see the module docstring).

    offset = now - t (positive: the packet's clock is behind ours, or it travelled). The consensus is the
    median offset of the last `window` packets that were within `max_skew`; with `quorum` or more of them a
    packet further than `tolerance` from it is dropped. Dropped packets still count toward the window, so
    a lasting step wins after about half a window of packets, while one packet never does.
    """

    def __init__(self, *, tolerance: float = 10.0, max_skew: float | None = None, window: int = 7,
                 quorum: int = 3) -> None:
        self.tolerance, self.max_skew, self.quorum = tolerance, max_skew, quorum
        self._recent: deque[float] = deque(maxlen=window)
        self.offset: float | None = None     # the consensus offset (None before the first packet)

    def check(self, t: float, now: float) -> str | None:
        """None to accept the packet, else why it is dropped (CLOCK_AHEAD or CLOCK_BEHIND)."""
        offset = now - t
        if self.max_skew is not None and abs(offset) > self.max_skew:
            return CLOCK_AHEAD if offset < 0 else CLOCK_BEHIND
        self._recent.append(offset)
        consensus = statistics.median(self._recent)
        if len(self._recent) >= self.quorum and abs(offset - consensus) > self.tolerance:
            return CLOCK_AHEAD if offset < consensus else CLOCK_BEHIND
        self.offset = consensus
        return None


class DropHealth:
    """Received and dropped datagrams of one source over the last one to two `window`s; `failing()` is the
    reason to show when more than `ratio` of at least `minimum` datagrams were dropped, else ""."""

    def __init__(self, window: float = 10.0, minimum: int = 20, ratio: float = 0.5, clock=time.monotonic) -> None:
        self.window, self.minimum, self.ratio, self._clock = window, minimum, ratio, clock
        self._started = clock()
        self._current: Counter[str] = Counter()
        self._previous: Counter[str] = Counter()
        self.dropped_total: Counter[str] = Counter()   # reason -> datagrams dropped since it started (/metrics)

    def _roll(self) -> None:
        now = self._clock()
        if now - self._started >= self.window:
            gone = now - self._started >= 2 * self.window
            self._previous = Counter() if gone else self._current
            self._current = Counter()
            self._started = now

    def saw(self, dropped: str | None = None, sender: str | None = None) -> None:
        """One datagram received; `dropped` names why it was dropped (None: it was used). `sender` is for
        SenderDrops' sake (one DropHealth judges the source as a whole)."""
        self._roll()
        self._current["received"] += 1
        if dropped:
            self._current["dropped"] += 1
            self._current["why:" + dropped] += 1
            self.dropped_total[dropped] += 1

    def failing(self) -> str:
        self._roll()
        total = self._previous + self._current
        received, dropped = total["received"], total["dropped"]
        if received < self.minimum or dropped <= self.ratio * received:
            return ""
        why = ", ".join(f"{k[4:]} {n}" for k, n in total.most_common() if k.startswith("why:"))
        return f"dropped {dropped} of {received} datagrams lately ({why})"


class SenderClocks:
    """A ClockGuard per sender address (made by `make`), at most `max_senders`: `guard(sender)` is None for a
    sender past that bound (its datagrams are dropped: the listener's allowed senders are far fewer)."""

    def __init__(self, make, max_senders: int = 64) -> None:
        self._make, self.max_senders = make, max_senders
        self._guards: dict[str, ClockGuard] = {}

    def guard(self, sender: str) -> ClockGuard | None:
        found = self._guards.get(sender)
        if found is None and len(self._guards) < self.max_senders:
            found = self._guards[sender] = self._make()
        return found


class SenderDrops:
    """A DropHealth per sender address (at most `max_senders`; later ones share one entry, "other"):
    `failing()` names every sender that drops most of what it sends."""

    OTHER = "other"

    def __init__(self, max_senders: int = 64, clock=time.monotonic) -> None:
        self.max_senders, self._clock = max_senders, clock
        self._by_sender: dict[str, DropHealth] = {}

    def of(self, sender: str | None) -> DropHealth:
        key = sender or self.OTHER
        found = self._by_sender.get(key)
        if found is None:
            if len(self._by_sender) >= self.max_senders:
                key = self.OTHER
                found = self._by_sender.get(key)
            if found is None:
                found = self._by_sender[key] = DropHealth(clock=self._clock)
        return found

    def saw(self, dropped: str | None = None, sender: str | None = None) -> None:
        self.of(sender).saw(dropped)

    @property
    def dropped_total(self) -> Counter[str]:
        """reason -> datagrams dropped since it started, every sender's together."""
        return sum((h.dropped_total for h in self._by_sender.values()), Counter())

    def failing(self) -> str:
        reasons = [f"sender {sender}: {why}" for sender, health in sorted(self._by_sender.items())
                   if (why := health.failing())]
        return "; ".join(reasons)
