"""Receive buffers for the lab's busy UDP sockets: one socket there stands for a whole site's traffic.

A registrar, the DNS server, the router relay's LAN side and the shared phone socket each receive what
thousands of phones send at once (a site booting, a refresh wave). The kernel's default buffer (rmem_default,
some 200 KB: a few hundred datagrams) overflowed while a busy lab process was between reads: the kernel dropped
the datagrams (Udp RcvbufErrors in /proc/net/snmp), phones timed out and retried, and the retries kept the
process busier still. Real servers are sized for their sites; these are sized for the lab's.
"""
from __future__ import annotations

import socket

RCVBUF = 8 * 1024 * 1024


def enlarge(sock: socket.socket | None, size: int = RCVBUF) -> int:
    """Ask for a `size` receive buffer (SO_RCVBUFFORCE as root, past net.core.rmem_max; else SO_RCVBUF, capped
    there by the kernel); the size in force, 0 when there is no socket."""
    if sock is None:
        return 0
    for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            break
        except OSError:
            continue
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def enlarge_transport(transport) -> int:
    """`enlarge` for an asyncio datagram transport's socket."""
    return enlarge(transport.get_extra_info("socket") if transport is not None else None)
