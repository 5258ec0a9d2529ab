"""A UDP listener read in batches by the event loop, each datagram stamped by the kernel as it arrived.

Two reasons it is not asyncio's own datagram transport. That transport reads one datagram per pass of the
loop; at a busy site the pass also runs every events request and timer, so a source on it got one datagram
per pass while the rest got all of theirs (bench/evidence.py saw HEP's p99 at 5,000 phones five times that of
events on the same loop). And it stamps nothing: a syslog line stamped when the collector's loop gets round to
it, hundreds of milliseconds late under load, says "registered" at a time the phone may already have been
told to reboot, and the rollout verified a phone still on its way down (one phone over max_unavailable in
tests/test_rollout_faults.py under two suites' load). The kernel's receive time (SO_TIMESTAMPNS) is this
host's own clock, taken as the datagram arrived; a sender cannot set it. Linux turns receive stamping on for
the host in deferred work after the first socket asks for it: a datagram that arrives in the moment before is
stamped when it is read (the kernel's own fallback), as every datagram was before this reader.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Protocol

DRAIN_MAX = 64          # datagrams read per wake-up of the event loop at most (then the other sources' turn)
DRAIN_BUDGET_S = 0.004  # ... and for this long at most: big hostile datagrams cost far more each than a REGISTER
DATAGRAM_MAX = 65535    # a UDP payload's size bound: nothing longer can arrive
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux's value (asm-generic); Python does not export it
_TIMESPEC = struct.Struct("@ll")                          # struct timespec: seconds, nanoseconds
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


class StampedProtocol(Protocol):
    """A datagram protocol that takes the arrival time (this host's wall clock) with each datagram."""

    def datagram_stamped(self, data: bytes, addr: tuple, arrived: float) -> None: ...


def _arrival(ancillary: list, now: float) -> float:
    """The kernel's receive stamp from recvmsg's ancillary data, or `now` (none, or not earlier than now)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            stamp = sec + nsec / 1e9
            return stamp if 0 < stamp <= now else now
    return now


class DrainingReader:
    """The listener's socket, read by the event loop up to DRAIN_MAX datagrams each time it is readable.

    Both bounds (DRAIN_MAX datagrams, DRAIN_BUDGET_S seconds) keep a flood on one port from holding the loop: a
    megabyte of hostile HEP headers 64 at a time pushed the events' round trip past 50 ms under load. With a
    protocol that has `datagram_stamped`, each datagram comes with the kernel's receive time; otherwise
    `datagram_received` as asyncio calls it. Offers what the callers use of a transport: close, is_closing and
    get_extra_info ("sockname", "socket")."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.DatagramProtocol):
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self._closed = False
        self._stamped = hasattr(protocol, "datagram_stamped")
        if self._stamped:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:     # a kernel without it: stamped on reading, as before
                pass
        loop.add_reader(sock.fileno(), self._readable)
        protocol.connection_made(self)     # type: ignore[arg-type]

    def _readable(self) -> None:
        until = time.monotonic() + DRAIN_BUDGET_S
        for _ in range(DRAIN_MAX):
            if time.monotonic() > until:
                return
            try:
                if self._stamped:
                    data, ancillary, _, addr = self.sock.recvmsg(DATAGRAM_MAX, _ANCILLARY)
                else:
                    data, addr = self.sock.recvfrom(DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.protocol.error_received(exc)
                return
            if self._stamped:
                self.protocol.datagram_stamped(data, addr, _arrival(ancillary, time.time()))  # type: ignore[attr-defined]
            else:
                self.protocol.datagram_received(data, addr)

    def get_extra_info(self, name: str, default=None):
        return {"sockname": self.sock.getsockname(), "socket": self.sock}.get(name, default) if not self._closed \
            else default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop reading and close the socket; safe to call twice, on the loop's thread."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.protocol.connection_lost(None)


async def open_reader(host: str, port: int, protocol: asyncio.DatagramProtocol,
                      rcvbuf: int | None = None) -> DrainingReader:
    """Bind host:port (UDP) and read it for `protocol` until the returned reader is closed."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(address)
        if rcvbuf:
            try:    # the kernel caps it at net.core.rmem_max; what it grants is what it grants
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            except OSError:
                pass
        return DrainingReader(loop, sock, protocol)
    except BaseException:
        sock.close()
        raise
