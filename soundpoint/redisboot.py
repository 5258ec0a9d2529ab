"""A private redis-server for the test suite, the benchmarks and the demo (`start_private`), locked down as below.

fleet itself never starts a Redis: its commands use the one fleet.toml (or
FLEET_REDIS_URL) names, so that every worker, collector and command shares one,
and say how to configure it when none is (fleet.cli.common.open_store). A Redis
started per command would leave a worker and an experiment on different ones.

Whoever can write to the broker can queue work for the routers and phones,
so Redis is never open: the private server (and every test's) has one ACL
user, `fleet`, with a random password, allowed every command except the
administrative ones (CONFIG, MODULE, DEBUG, REPLICAOF, SHUTDOWN...: the usual
ways from Redis onto its host). Nobody can log in as the default user: it has
no password at all (`resetpass`, and not `nopass`). It stays `on` because
Redis 7 replays MULTI/EXEC from the append-only file as the default user, and
with that user off every transaction is silently dropped at restart (redis
issue 14541, fixed only in later releases). The configuration reaches
redis-server on its standard input, so the password is neither on its
command line (visible in `ps`) nor in a file.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import redis


ACL_USER = "fleet"
# every key and channel, every command but the administrative ones
ACL_RULES = "~* &* +@all -@admin"
# no password can match (resetpass, not nopass), so nobody logs in as it; on, with the fleet user's rights,
# only so that Redis 7 can replay the AOF's transactions as it (see above)
DEFAULT_USER = f"user default on resetpass {ACL_RULES}"


class RedisUnavailable(RuntimeError):
    pass


def _ephemeral_low() -> int:
    """The low end of the kernel's ephemeral port range (outgoing connections take their local port from it)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORTS_FROM = 10000              # listeners' ports: from here up to the ephemeral range (above the usual services)
RESERVE_S = 900.0               # a port handed out is not handed out again on this machine for this long
_cursor_lock = threading.Lock()
_cursor: list[int] = []         # this process's place in its ports, set at its first pick


def listener_ports() -> range:
    """The ports free_port hands out: FREE_PORT_RANGE=LOW-HIGH when set (a test runner gives each of its
    processes a slice of its own, so two never pick the same port), else PORTS_FROM up to the ephemeral range."""
    spec = os.environ.get("FREE_PORT_RANGE", "")
    if spec:
        low, _, high = spec.partition("-")
        if low.isdigit() and high.isdigit() and 1024 <= int(low) < int(high) <= 65536:
            return range(int(low), int(high))
    return range(PORTS_FROM, max(PORTS_FROM, _ephemeral_low()))


def _reservations() -> Path | None:
    """Where handed-out ports are noted, machine-wide: beside hil.netlock's locks ($HIL_LOCK_DIR, else
    /tmp/soundpoint-hil-locks), in `ports/`; None when it cannot be made."""
    path = Path(os.environ.get("HIL_LOCK_DIR") or "/tmp/soundpoint-hil-locks") / "ports"
    try:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o1777)      # every user's labs and suites share the machine's loopback
        return path
    except OSError:
        return None


def _reserve(port: int) -> bool:
    """Note `port` as handed out; False when another process (or this one) handed it out less than RESERVE_S
    ago. A port is picked minutes before its listener binds it, and until then the bind check alone cannot see
    it taken: a `hil up` child picking from its parent's slice, or a second test suite, handed out the same one
    (a worker's collector then found its port "already in use")."""
    where = _reservations()
    if where is None:
        return True                     # nowhere to note it: the bind check alone decides, as before
    path = where / str(port)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        return True
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < RESERVE_S:
                return False
            os.utime(path)              # an old note: the port is free again, and noted anew
            return True
        except OSError:
            return False
    except OSError:
        return True


def free_port() -> int:
    """A loopback port free now, for a listener that binds it later, from below the ephemeral range: a port
    that bind(0) hands out is an ephemeral one, and until the listener binds it any process's outgoing
    connection may take it as its local port (a collector failed so, "Address already in use"). Free for TCP
    and UDP both (collectors listen on both). The process walks its ports in turn from a random start, so it
    never hands out a port twice before it has been through them all (a lab picks its collectors' ports
    minutes before a worker binds them), and skips a port any process on the machine handed out in the last
    RESERVE_S (`_reserve`); bind(0) only if none is free."""
    import random

    ports = listener_ports()
    with _cursor_lock:
        if ports and not _cursor:
            _cursor.append(random.randrange(len(ports)))
        # a lap minding the notes of handed-out ports, then (every one noted: a slice used hard for RESERVE_S)
        # a lap on the bind check alone, rather than an ephemeral port
        for mind_notes in (True, False):
            for _ in range(min(len(ports), 4000)):
                port = ports[_cursor[0] % len(ports)]
                _cursor[0] += 1
                try:
                    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        tcp.bind(("127.0.0.1", port))
                        udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                if not mind_notes or _reserve(port):
                    return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_config(port: int, directory: Path, password: str, appendonly: bool, admin_password: str | None = None) -> str:
    """redis.conf text for a private server: loopback only, default user off, one ACL user with `password`
    (and, for a test harness that watches the server with MONITOR, an `admin` user with every command)."""
    for pw in (password, admin_password):
        if pw is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", pw):
            raise ValueError("a Redis password must be 16-128 characters of [A-Za-z0-9_-]")
    return "\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode yes", 'save ""', f'dir "{directory}"',
        f"appendonly {'yes' if appendonly else 'no'}",
        DEFAULT_USER,
        f"user {ACL_USER} on >{password} {ACL_RULES}",
        *([f"user admin on >{admin_password} ~* &* +@all"] if admin_password else []),
    ]) + "\n"


def start_private(directory: Path | None = None, port: int | None = None, appendonly: bool = False,
                  password: str | None = None, admin_password: str | None = None) -> tuple[str, subprocess.Popen]:
    """Start redis-server on a free loopback port with a fresh ACL password (or `password`, to restart a server
    on its data under the same credentials); returns its URL, credentials included, and process (the caller stops it)."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RedisUnavailable("redis-server is not installed: install it (Debian: apt-get install redis-server)")
    if port is None:
        for _ in range(3):    # a port picked free may be taken before the server binds it: pick another
            try:
                return _start(binary, free_port(), directory, appendonly, password, admin_password)
            except _PortTaken:
                continue
        raise RedisUnavailable("private redis-server exited at once on three ports (taken, or it cannot run here)")
    try:
        return _start(binary, port, directory, appendonly, password, admin_password)
    except _PortTaken:
        raise RedisUnavailable(f"private redis-server on port {port} did not start") from None


class _PortTaken(RuntimeError):
    """The server exited at once: most likely its port was taken."""


def _start(binary: str, port: int, directory: Path | None, appendonly: bool, password: str | None,
           admin_password: str | None) -> tuple[str, subprocess.Popen]:
    directory = directory or Path(tempfile.mkdtemp(prefix="fleet-redis-"))
    directory.mkdir(parents=True, exist_ok=True)
    password = password or secrets.token_urlsafe(24)
    if not re.fullmatch(r"[^\x00-\x1f\"]+", str(directory)):
        raise RedisUnavailable(f"cannot use {directory!r} as the Redis data directory")
    proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(server_config(port, directory, password, appendonly, admin_password).encode())
    proc.stdin.close()
    url = f"redis://{ACL_USER}:{quote(password, safe='')}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if redis.Redis.from_url(url, socket_timeout=0.5).ping():
                return url, proc
        except redis.RedisError:
            time.sleep(0.05)
    if proc.poll() is not None:
        raise _PortTaken(port)
    proc.kill()
    raise RedisUnavailable(f"private redis-server on port {port} did not start")
