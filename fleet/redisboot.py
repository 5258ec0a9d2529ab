"""Where Redis is: FLEET_REDIS_URL, or a private redis-server this tool starts when none is configured."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from .redact import redact_url


class RedisUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_private(directory: Path | None = None, port: int | None = None, appendonly: bool = False) -> tuple[str, subprocess.Popen]:
    """Start redis-server on a free loopback port; returns its URL and process (the caller stops it)."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RedisUnavailable("FLEET_REDIS_URL is not set and redis-server is not installed: "
                               "install it (Debian: apt-get install redis-server) or set FLEET_REDIS_URL=redis://host:port/0")
    port = port or free_port()
    directory = directory or Path(tempfile.mkdtemp(prefix="fleet-redis-"))
    directory.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory),
            "--appendonly", "yes" if appendonly else "no", "--protected-mode", "yes"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url, socket_timeout=0.5).ping():
                return url, proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RedisUnavailable(f"private redis-server on port {port} did not start")


def redis_url(announce: bool = True) -> str:
    url = os.environ.get("FLEET_REDIS_URL")
    if url:
        return url
    url, proc = start_private()
    os.environ["FLEET_REDIS_URL"] = url
    if announce:
        print(f"fleet: FLEET_REDIS_URL not set; started a private redis-server at {redact_url(url)} (pid {proc.pid})",
              file=sys.stderr)
    return url
