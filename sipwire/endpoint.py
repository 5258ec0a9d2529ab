"""An asyncio SIP endpoint over UDP with client transactions (RFC 3261 17.1).

Non-INVITE and INVITE client transactions retransmit from T1 doubling up to T2
(non-INVITE) and give up at Timer B/F = 64*T1. Polycom's `retryTimeOut` /
`retryMaxCount` replace those timers when set: the request is sent
1 + retryMaxCount times, `retryTimeOut` apart. The same class serves the
virtual phones, the lab registrar and the controller's probes, so a
transaction timeout means the same thing everywhere.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from . import message as sip

log = logging.getLogger(__name__)

RequestHandler = Callable[[sip.SipMessage, tuple[str, int]], Awaitable[sip.SipMessage | None] | sip.SipMessage | None]


@dataclass(frozen=True)
class TransactionTimers:
    t1: float = 0.5
    t2: float = 4.0
    retry_timeout: float | None = None   # Polycom retryTimeOut in seconds, None = RFC 3261 timers
    retry_max_count: int = 3

    @property
    def timeout(self) -> float:
        """Seconds after which a transaction with no final response has failed."""
        if self.retry_timeout:
            return self.retry_timeout * (self.retry_max_count + 1)
        return 64 * self.t1

    def schedule(self, invite: bool) -> list[float]:
        """Delays between successive transmissions."""
        if self.retry_timeout:
            return [self.retry_timeout] * self.retry_max_count
        delays, interval, total = [], self.t1, 0.0
        while total + interval < self.timeout:
            delays.append(interval)
            total += interval
            interval = interval * 2 if invite else min(interval * 2, self.t2)
        return delays


class TransactionTimeout(Exception):
    """No final response before Timer B/F (or the Polycom retry budget) ran out."""


class SipEndpoint(asyncio.DatagramProtocol):
    """One UDP socket; incoming requests go to `handler`, responses to waiting transactions."""

    def __init__(self, handler: RequestHandler | None = None, name: str = "sip") -> None:
        self.handler = handler
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self._pending: dict[str, asyncio.Future] = {}
        self._provisional: dict[str, Callable[[sip.SipMessage], None]] = {}
        self.malformed = 0

    @classmethod
    async def bind(cls, host: str, port: int = 0, handler: RequestHandler | None = None, name: str = "sip") -> "SipEndpoint":
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(handler, name), local_addr=(host, port))
        return proto

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.local = transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self.transport:
            self.transport.close()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: socket error %s", self.name, exc)

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if data.strip() == b"":
            return  # keep-alive CRLF
        try:
            msg = sip.parse(data)
        except sip.SipParseError as exc:
            self.malformed += 1
            log.debug("%s: dropped malformed datagram from %s: %s", self.name, addr, exc)
            return
        if msg.is_request:
            if self.handler is not None:
                asyncio.ensure_future(self._dispatch(msg, addr[:2]))
            return
        key = msg.top_via_branch
        fut = self._pending.get(key)
        if fut is None or fut.done():
            return
        if msg.status is not None and msg.status < 200:
            cb = self._provisional.get(key)
            if cb:
                cb(msg)
            return
        fut.set_result(msg)

    async def _dispatch(self, msg: sip.SipMessage, addr: tuple[str, int]) -> None:
        try:
            result = self.handler(msg, addr)  # type: ignore[misc]
            if asyncio.iscoroutine(result):
                result = await result
            if result is not None:
                self.send(result, self._response_target(msg, addr))
        except Exception:  # a handler bug must not kill the socket; it is logged with its traceback
            log.exception("%s: handler failed for %s from %s", self.name, msg.method, addr)

    @staticmethod
    def _response_target(request: sip.SipMessage, addr: tuple[str, int]) -> tuple[str, int]:
        # Symmetric response routing (RFC 3581): answer where the request came from.
        return addr

    def send(self, msg: sip.SipMessage, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(msg.encode(), addr)

    async def request(self, msg: sip.SipMessage, addr: tuple[str, int], timers: TransactionTimers = TransactionTimers(),
                      on_provisional: Callable[[sip.SipMessage], None] | None = None) -> sip.SipMessage:
        """Send `msg` reliably; return the final response or raise TransactionTimeout."""
        key = msg.top_via_branch
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        if on_provisional:
            self._provisional[key] = on_provisional
        data = msg.encode()
        try:
            self.transport.sendto(data, addr)  # type: ignore[union-attr]
            for delay in timers.schedule(invite=msg.method == "INVITE"):
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), delay)
                except asyncio.TimeoutError:
                    if self.transport is None or self.transport.is_closing():
                        raise TransactionTimeout(f"{msg.method} to {addr[0]}:{addr[1]}: socket closed") from None
                    self.transport.sendto(data, addr)
            remaining = timers.timeout - sum(timers.schedule(invite=msg.method == "INVITE"))
            try:
                return await asyncio.wait_for(asyncio.shield(fut), max(remaining, timers.t1))
            except asyncio.TimeoutError:
                raise TransactionTimeout(f"{msg.method} to {addr[0]}:{addr[1]}: no response in {timers.timeout:.1f}s") from None
        finally:
            self._pending.pop(key, None)
            self._provisional.pop(key, None)
            if not fut.done():
                fut.cancel()
