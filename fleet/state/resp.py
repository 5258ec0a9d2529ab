"""A bare Redis client for one short read: a socket, hiredis' reply parser, commands sent in one round trip.

Why not redis-py: importing it costs more than everything else `fleet status --json --site S` does (100 ms and
more: it imports asyncio, its cluster client, its observability hooks), and that command is run by hand and by
scripts, one process per call. This client knows just enough to connect, authenticate, choose a database and
send a batch of commands; everything else is redis-py's. It declines (`Unsupported`) whatever it does not
handle exactly as redis-py would: another scheme (rediss://, unix://), query arguments, a user without a
password; and everything, without hiredis. Its callers then use redis-py (fleet.state.store.Store), which also
gives every failure its usual message: this client's own errors never reach a user.

No key names here: fleet.state.store builds them.
"""
from __future__ import annotations

import socket
from typing import Sequence
from urllib.parse import unquote, urlsplit

try:
    import hiredis
except ImportError:     # a declared dependency, but fleet.state.store (which imports this) must load without it
    hiredis = None

READ_SIZE = 1 << 20     # a 36 MB reply in 36 reads, not the 550 of a 64 KB buffer
DEFAULT_PORT = 6379


class Unsupported(Exception):
    """The URL asks for something this client does not do: use redis-py."""


class ReplyError(Exception):
    """Redis answered a command with an error (WRONGPASS, NOPERM, WRONGTYPE ...)."""


def parse_url(url: str) -> tuple[str, int, str | None, str | None, int]:
    """(host, port, username, password, db) of a plain `redis://` URL, read the way redis-py's from_url reads it;
    Unsupported for any URL where the two could differ."""
    if not url.lower().startswith("redis://"):
        raise Unsupported("scheme")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise Unsupported("query arguments")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if username and not password:
        raise Unsupported("user without password")
    path = unquote(parts.path).replace("/", "")
    if path and not path.isdigit():
        raise Unsupported("database")
    return (unquote(parts.hostname) if parts.hostname else "localhost", parts.port or DEFAULT_PORT,
            username, password, int(path or 0))


class Connection:
    """One connection to Redis, authenticated and on its database, for `pipeline` calls until `close`."""

    def __init__(self, url: str, timeout: float) -> None:
        if hiredis is None:
            raise Unsupported("hiredis is not installed")
        host, port, username, password, db = parse_url(url)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(READ_SIZE)
        setup: list[tuple] = []
        if password:
            setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            setup.append(("SELECT", db))
        if setup:
            try:
                self.pipeline(setup)
            except BaseException:
                self.close()
                raise

    def pipeline(self, commands: Sequence[Sequence[str | bytes | int]]) -> list:
        """The replies to `commands`, sent together: bytes, integers, lists of them, None. A reply that is an
        error raises ReplyError once every reply is read."""
        self.sock.sendall(b"".join(hiredis.pack_command(tuple(c)) for c in commands))
        reader = hiredis.Reader()
        replies: list = []
        view = memoryview(self.buf)
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is False:
                n = self.sock.recv_into(view)
                if not n:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(self.buf, 0, n)
                continue
            replies.append(reply)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ReplyError(str(reply))
        return replies

    def close(self) -> None:
        self.sock.close()
