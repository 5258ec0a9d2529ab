"""The boot (provisioning) server: one directory served over HTTP (GET, PUT) and FTP, with credentials.

Phones read their files and upload logs; the controller publishes with PUT or
STOR. Paths are confined to the directory (no traversal), over both protocols.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from aiohttp import BasicAuth, web


def safe_path(root: Path, relative: str) -> Path | None:
    """The file `relative` inside `root`, or None if it would leave `root`."""
    candidate = (root / relative.lstrip("/")).resolve()
    root = root.resolve()
    if candidate != root and root not in candidate.parents:
        return None
    return candidate


class HttpBootServer:
    def __init__(self, root: Path, host: str, port: int, username: str, password: str) -> None:
        self.root, self.host, self.port = root, host, port
        self.username, self.password = username, password
        self.runner: web.AppRunner | None = None

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            return False
        return auth.login == self.username and auth.password == self.password

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if not self._authorized(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="boot"'})
        target = safe_path(self.root, path)
        if target is None:
            return web.Response(status=403, text="outside the boot directory")
        if request.method == "DELETE":
            existed = target.is_file()
            if existed:
                target.unlink()
            return web.Response(status=204 if existed else 404)
        if request.method == "PUT":
            body = await request.read()
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(body)
            os.replace(tmp, target)  # a phone never reads a half-written file
            return web.Response(status=201)
        if not target.is_file():
            return web.Response(status=404)
        return web.Response(body=target.read_bytes(), content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("GET", "/{path:.*}", self._handle)
        app.router.add_route("PUT", "/{path:.*}", self._handle)
        app.router.add_route("DELETE", "/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


class FtpBootServer:
    """pyftpdlib in its own thread; its authorizer confines the user to the directory."""

    def __init__(self, root: Path, host: str, port: int, username: str, password: str) -> None:
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import ThreadedFTPServer

        import logging

        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        authorizer.add_user(username, password, str(root), perm="elradfmw")
        handler = type("BootFtpHandler", (FTPHandler,), {})
        handler.authorizer = authorizer
        handler.banner = "boot server ready"
        handler.passive_ports = None
        # an IOLoop of its own: the shared default one races between sites starting in the same lab process
        self.server = ThreadedFTPServer((host, port), handler, ioloop=IOLoop())
        self.server.max_cons = 2048
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"timeout": 0.5}, daemon=True, name="ftp")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.close_all()


class HttpBootServerProcess:
    """The HTTP boot server in a process of its own, as a boot server is a host of its own.

    In one process with a thousand phones it would share their event loop, and a
    controller publishing hard would delay the phones' DNS and SIP timers: the
    lab would then measure itself. Credentials reach the child on stdin, never
    in its command line; it dies with the lab (PR_SET_PDEATHSIG).
    """

    def __init__(self, root: Path, host: str, port: int, username: str, password: str) -> None:
        self.config = {"root": str(root), "host": host, "port": port, "username": username, "password": password}
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hil.bootserver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(self.config).encode() + b"\n")
        self.proc.stdin.close()
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError(f"boot server on {self.config['host']}:{self.config['port']} did not start")

    async def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _main() -> None:
    config = json.loads(sys.stdin.readline())

    async def serve() -> None:
        server = HttpBootServer(Path(config["root"]), config["host"], int(config["port"]), config["username"], config["password"])
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(serve())


if __name__ == "__main__":
    _main()
