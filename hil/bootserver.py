"""The boot (provisioning) server: one directory served over HTTP (GET, PUT) and FTP, with credentials.

Phones read their files and upload logs; the controller publishes with PUT or
STOR. Paths are confined to the directory (no traversal), over both protocols.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import asyncssh
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

    def __init__(self, root: Path, host: str, port: int, username: str, password: str, perm: str = "elradfmw") -> None:
        """`perm` is pyftpdlib's permission string: a site whose user may not delete ("elrafmw") is a real case."""
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import ThreadedFTPServer

        import logging

        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        authorizer = DummyAuthorizer()
        authorizer.add_user(username, password, str(root), perm=perm)
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


class _ConfinedSftp(asyncssh.SFTPServer):
    """asyncssh's chroot maps names but follows symlinks out of it; this refuses any path whose real location leaves the root."""

    def __init__(self, chan: asyncssh.SSHServerChannel, root: bytes) -> None:
        super().__init__(chan, chroot=root)
        self.root = root

    def map_path(self, path: bytes) -> bytes:
        if b"\0" in path:
            raise asyncssh.SFTPInvalidFilename("NUL byte in file name")
        local = super().map_path(path)
        real = os.path.realpath(local)
        if real != self.root and not real.startswith(self.root + b"/"):
            raise asyncssh.SFTPPermissionDenied("outside the boot directory")
        return local


class _PasswordLogin(asyncssh.SSHServer):
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return hmac.compare_digest(username.encode(), self.username.encode()) and \
            hmac.compare_digest(password.encode(), self.password.encode())


class SftpBootServer:
    """The boot directory over SFTP (asyncssh), password login, for sites whose boot server only speaks SFTP.

    Paths are confined like the HTTP and FTP servers': a symlink that leads out
    of the directory is refused rather than followed. The host key is made per
    server unless one is given; `known_hosts_line()` is what a controller must trust.
    """

    def __init__(self, root: Path, host: str, port: int, username: str, password: str,
                 host_key: asyncssh.SSHKey | None = None) -> None:
        self.root, self.host, self.port = root, host, port
        self.username, self.password = username, password
        self.host_key = host_key or asyncssh.generate_private_key("ssh-ed25519")
        self.server: asyncssh.SSHAcceptor | None = None

    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key.export_public_key('openssh').decode().strip()}\n"

    async def start(self) -> None:
        root = os.fsencode(os.path.realpath(self.root))
        self.server = await asyncssh.create_server(
            lambda: _PasswordLogin(self.username, self.password), self.host, self.port,
            server_host_keys=[self.host_key], sftp_factory=lambda chan: _ConfinedSftp(chan, root), allow_scp=False)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()


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
