"""The boot (provisioning) server: one directory served over HTTP (GET, PUT, DELETE), FTP and SFTP, with credentials.

Phones read their files and upload logs; the controller publishes with PUT,
STOR or SFTP. Over HTTP reads are open (or checked when they carry
credentials) and writes are challenged with Digest (hil.http_digest), so no
client has to send a password in clear; the server can serve HTTPS too. Paths are confined to the directory over every protocol: no
traversal, no symlink followed out of it, and a bad name gets a refusal (4xx
over HTTP, 5xx over FTP), never a traceback.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import asyncssh
from aiohttp import BasicAuth, web

from .http_digest import DigestAuthority


MAX_NAME_BYTES = 255   # NAME_MAX: longer names are refused up front, not left to fail as a 500


class Refused(Exception):
    """A request the boot server answers with a 4xx before touching any file."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def request_names(relative: str) -> list[str]:
    """The names along a request path inside the boot directory (empty: the directory itself).

    Checked lexically, before any file is touched: no NUL, no `..`, no name
    longer than a file system allows. Symlinks are dealt with while walking.
    """
    if "\0" in relative:
        raise Refused(400, "NUL byte in the path")
    names = [n for n in relative.split("/") if n not in ("", ".")]
    if ".." in names:
        raise Refused(403, "outside the boot directory")
    if any(len(n.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for n in names):
        raise Refused(400, f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
    return names


def _os_refusal(exc: OSError) -> Refused:
    """An OSError met while serving, as the answer a client can act on (and no traceback)."""
    by_errno = {errno.ENOENT: (404, "not found"), errno.ENOTDIR: (404, "not found"),
                errno.ELOOP: (403, "a symbolic link: not followed"), errno.EISDIR: (409, "is a directory"),
                errno.ENAMETOOLONG: (400, "name too long"), errno.EACCES: (403, "permission denied"),
                errno.EPERM: (403, "permission denied"), errno.EROFS: (403, "read-only file system"),
                errno.ENOSPC: (507, "no space left"), errno.EDQUOT: (507, "quota exceeded")}
    status, reason = by_errno.get(exc.errno, (500, exc.strerror or type(exc).__name__))
    return Refused(status, reason)


class BootDirectory:
    """File operations confined to one directory: symlinks are never followed, temporary files never reused.

    Every path is walked from a descriptor of the root with O_NOFOLLOW, so a
    symlink planted anywhere (a directory, the file, `<file>.part`) cannot
    lead a write, read or delete outside. A PUT writes a fresh temporary file
    created exclusively beside the target and renames it over the target, so a
    phone never reads half a file and a planted name is never written through.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _walk(self, dirs: list[str], create: bool) -> int:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in dirs:
                try:
                    nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read(self, names: list[str]) -> bytes:
        if not names:
            raise Refused(403, "a directory, not a file")
        dir_fd = self._walk(names[:-1], create=False)
        try:
            fd = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise Refused(403, "a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, names: list[str], body: bytes) -> None:
        if not names:
            raise Refused(400, "PUT needs a file name, not the boot directory")
        dir_fd = self._walk(names[:-1], create=True)
        try:
            st = self._lstat(names[-1], dir_fd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise Refused(409, "is a directory")
            tmp = f".{secrets.token_hex(16)}.put"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(body)
                os.rename(tmp, names[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)   # replaces a symlink, never follows it
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dir_fd)
                except OSError:
                    pass
                raise
        finally:
            os.close(dir_fd)

    def delete(self, names: list[str]) -> bool:
        """Whether there was a file to delete; a symlink is removed itself, a directory refused."""
        if not names:
            raise Refused(400, "DELETE needs a file name, not the boot directory")
        try:
            dir_fd = self._walk(names[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            st = self._lstat(names[-1], dir_fd)
            if st is None:
                return False
            if stat.S_ISDIR(st.st_mode):
                raise Refused(409, "is a directory")
            os.unlink(names[-1], dir_fd=dir_fd)
            return True
        finally:
            os.close(dir_fd)


class HttpBootServer:
    """The boot directory over HTTP: reads open to anyone (or with valid credentials), writes only with credentials.

    A write is challenged with Digest (`challenges`, "Digest" first), so a
    client never has to send the password in clear over plain HTTP; Basic is
    still accepted from clients that send it unasked (the lab's phones, as
    many real ones, upload their logs that way). A site whose server offers
    only Basic is `challenges=("Basic",)`. `auth_seen` keeps, per request, the
    method and the authorization scheme it carried ("" for none): the lab's
    ground truth of what crossed the wire.
    """

    REALM = "boot"

    def __init__(self, root: Path, host: str, port: int, username: str, password: str,
                 challenges: tuple[str, ...] = ("Digest",), ssl_context=None) -> None:
        """`ssl_context`: serve HTTPS (an `ssl.SSLContext` holding the server's certificate)."""
        self.root, self.host, self.port = root, host, port
        self.ssl_context = ssl_context
        self.files = BootDirectory(root)
        self.username, self.password = username, password
        self.digest = DigestAuthority(self.REALM, username, password)
        self.challenges = challenges
        self.auth_seen: deque[tuple[str, str]] = deque(maxlen=10_000)
        self.runner: web.AppRunner | None = None

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "digest ":
            return self.digest.verify(header, request.method, request.raw_path)
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            return False
        return hmac.compare_digest(auth.login.encode(), self.username.encode()) and \
            hmac.compare_digest(auth.password.encode(), self.password.encode())

    def _challenge(self) -> web.Response:
        offers = [self.digest.challenge() if c == "Digest" else f'Basic realm="{self.REALM}"' for c in self.challenges]
        return web.Response(status=401, headers=[("WWW-Authenticate", o) for o in offers])   # type: ignore[arg-type]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        self.auth_seen.append((request.method, header.partition(" ")[0]))
        anonymous_read = request.method == "GET" and not header
        if not anonymous_read and not self._authorized(request):
            return self._challenge()
        try:
            names = request_names(request.match_info["path"])
            if request.method == "PUT":
                self.files.write(names, await request.read())
                return web.Response(status=201)
            if request.method == "DELETE":
                return web.Response(status=204 if self.files.delete(names) else 404)
            return web.Response(body=self.files.read(names), content_type="application/octet-stream")
        except Refused as exc:
            return web.Response(status=exc.status, text=exc.reason + "\n")
        except OSError as exc:
            refusal = _os_refusal(exc)
            return web.Response(status=refusal.status, text=refusal.reason + "\n")

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("GET", "/{path:.*}", self._handle)
        app.router.add_route("PUT", "/{path:.*}", self._handle)
        app.router.add_route("DELETE", "/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


class _SaneNames:
    """Refuses NUL bytes and over-long names with an FTP reply before pyftpdlib meets them.

    pyftpdlib resolves every path with os.path.realpath, which raises on a NUL
    byte: the session died with a traceback in the server's log.
    """

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if "\0" in line:
            self.respond("501 NUL byte in the command.")
            return
        spec = self.proto_cmds.get(cmd) or {}
        if arg and spec.get("perm") and any(len(n.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for n in arg.split("/")):
            self.respond(f"553 File name not allowed: a name is longer than {MAX_NAME_BYTES} bytes.")
            return
        super().pre_process_command(line, cmd, arg)


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
        handler = type("BootFtpHandler", (_SaneNames, FTPHandler), {})
        handler.authorizer = authorizer
        handler.banner = "boot server ready"
        handler.passive_ports = None
        # an IOLoop of its own: the shared default one races between sites starting in the same lab process
        self.server = ThreadedFTPServer((host, port), handler, ioloop=IOLoop())
        self.server.max_cons = 2048
        # pyftpdlib keeps ThreadedFTPServer's stop flag and lock on the class: stopping one server set the flag for
        # every other in the process, whose sessions then ended at once, and one started before its thread cleared
        # the flag dropped its first connections (EOF before the banner: a test suite under load saw it)
        self.server._exit = threading.Event()
        self.server._lock = threading.Lock()
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
    def __init__(self, username: str, password: str, connections: set) -> None:
        self.username, self.password, self.connections = username, password, connections

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.difference_update([c for c in self.connections if c.is_closed()])

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
        self.connections: set[asyncssh.SSHServerConnection] = set()

    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key.export_public_key('openssh').decode().strip()}\n"

    async def start(self) -> None:
        root = os.fsencode(os.path.realpath(self.root))
        self.server = await asyncssh.create_server(
            lambda: _PasswordLogin(self.username, self.password, self.connections), self.host, self.port,
            server_host_keys=[self.host_key], sftp_factory=lambda chan: _ConfinedSftp(chan, root), allow_scp=False)

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()
        for conn in list(self.connections):   # sessions still open would outlive the server otherwise
            conn.close()
            await conn.wait_closed()
        self.connections.clear()


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
