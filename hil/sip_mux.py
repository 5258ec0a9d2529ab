"""One UDP socket for the SIP of every phone in a process, each datagram sent from its phone's own address.

A socket per phone costs a descriptor per phone, and a process may hold only so many (RLIMIT_NOFILE: 20,000 hard
on the bench machine). This socket is bound once to the wildcard address on a port free on every address (so it
takes nobody's 5060 and two labs never share it); every phone listens on that port (voIpProt.local.port, the
phone's `sip_port` in the inventory) at its own 127.x address:

- receive: recvmsg with IP_PKTINFO names the local address each datagram was sent to; the datagram goes to the
  phone at that address (a dictionary lookup: linear in nothing). Datagrams to an address no phone holds are
  dropped and counted.
- send: sendmsg with an IP_PKTINFO control message whose ipi_spec_dst is the phone's address, so the datagram
  leaves from the phone's own address (the fleet's evidence attributes SIP by source address). Every 127/8
  address is local on Linux, so no privilege (IP_FREEBIND, IP_TRANSPARENT) is needed.

Each phone sees a transport of its own (`PhoneTransport`), so sipwire.endpoint.SipEndpoint works on it unchanged.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

from sipwire.endpoint import RequestHandler, SipEndpoint

from . import limits, udp_buffers

log = logging.getLogger(__name__)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)       # <linux/in.h>; Python 3.11 does not export it
MAX_DATAGRAM = 65535                                 # the largest UDP payload: nothing read is larger
BATCH = 256                                          # datagrams read per wake-up before the loop runs others
_PKTINFO = struct.Struct("I4s4s")                    # struct in_pktinfo: ifindex, spec_dst, addr


class PhoneTransport(asyncio.DatagramTransport):
    """The part of the shared socket one phone sees: sends leave from `ip`, sockname is (ip, port)."""

    def __init__(self, mux: "SharedSipSocket", ip: str) -> None:
        super().__init__()
        self._mux, self.ip = mux, ip
        self._cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, socket.inet_aton(ip), b"\0\0\0\0"))]
        self._closing = False

    def sendto(self, data, addr=None) -> None:  # type: ignore[override]
        if not self._closing and addr is not None:
            self._mux.send(data, addr, self._cmsg)

    def is_closing(self) -> bool:
        return self._closing or self._mux.closed

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._mux.detach(self.ip)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default=None):
        if name == "sockname":
            return (self.ip, self._mux.port)
        if name == "socket":
            return self._mux.sock
        return default


class SharedSipSocket:
    """The process's one SIP socket; `endpoint(ip, handler)` gives a phone its SipEndpoint on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._by_ip: dict[str, asyncio.DatagramProtocol] = {}
        self.closed = False
        self.unknown = 0        # datagrams to an address no phone of this process holds
        self.dropped = 0        # sends the kernel refused (buffer full): lost, as UDP may be
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(cls, host: str = "0.0.0.0", port: int = 0) -> "SharedSipSocket":
        """Bind the wildcard address on `port` (0: one free on every address). OSError as the kernel gives it."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            udp_buffers.enlarge(sock)      # bursts of thousands of answers must not overflow it
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def endpoint(self, ip: str, handler: RequestHandler | None, name: str) -> SipEndpoint:
        """A SipEndpoint for the phone at `ip` (ValueError when another phone of the process holds it)."""
        if ip in self._by_ip:
            raise ValueError(f"{name}: address {ip} is already taken by another phone of this lab")
        ep = SipEndpoint(handler, name)
        self._by_ip[ip] = ep
        ep.connection_made(PhoneTransport(self, ip))
        return ep

    def detach(self, ip: str) -> None:
        self._by_ip.pop(ip, None)

    def send(self, data: bytes, addr: tuple[str, int], cmsg: list) -> None:
        if self.closed:
            return
        try:
            self.sock.sendmsg([data], cmsg, 0, addr[:2])
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
        except OSError as exc:    # an unreachable destination must not stop the phone; lost like any datagram
            self.dropped += 1
            log.debug("shared SIP socket: send to %s failed: %s", addr, exc)

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, anc, _flags, addr = self.sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue      # a queued ICMP error: nothing to deliver
                log.debug("shared SIP socket: receive failed: %s", exc)
                return
            local = _destination(anc)
            proto = self._by_ip.get(local) if local else None
            if proto is None:
                self.unknown += 1
                continue
            proto.datagram_received(data, addr)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            except RuntimeError:
                pass
            self.sock.close()

    @property
    def phones(self) -> int:
        """Phones on this socket now (no __len__: an empty socket must still be truthy)."""
        return len(self._by_ip)


def _destination(ancillary: list) -> str | None:
    """The local address in an IP_PKTINFO control message (its ipi_addr), None without one."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
            return socket.inet_ntoa(data[8:12])
    return None


async def bind_endpoint(shared: SharedSipSocket | None, ip: str, port: int, handler: RequestHandler | None,
                        name: str) -> SipEndpoint:
    """A phone's SIP endpoint: on the shared socket when the lab has one, else a socket of its own."""
    if shared is not None:
        return shared.endpoint(ip, handler, name)
    try:
        return await SipEndpoint.bind(ip, port, handler, name=name)
    except OSError as exc:
        limits.check(exc, f"{name}: SIP socket on {ip}:{port}")
        raise
