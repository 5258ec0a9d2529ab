"""Publishers and the lab's boot servers never write outside their directory, and never fail with a traceback.

Issue 8, item 4 and the publisher parts of item 7. Every case runs against the
lab's real servers over real sockets: the HTTP boot server in a process of its
own (as `hil up` runs it), the FTP boot server (pyftpdlib) and the SFTP boot
server (asyncssh); `file://` against a real directory. An attacker here is
anyone who can plant a file or a symlink in the boot directory.
"""
from __future__ import annotations

import asyncio
import base64
import ftplib
import http.client
import io
import json
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import lab_spec, run_fleet, start_lab, wait_until, write_rollout_playbook
from fleet.drivers.errors import DeviceRefused, DriverError, HostKeyUnknown
from fleet.drivers.publish import open_publisher
from fleet.drivers.publish.names import MAX_NAME_BYTES, UnsafeName, check_name
from fleet.config.inventory import Credentials
from soundpoint.redisboot import free_port
from hil.bootserver import FtpBootServer, HttpBootServerProcess, SftpBootServer
from hil.harness import listening

USER, PASSWORD = "PlcmSpIp", "boot-pw-Zq81x"
OUTSIDE = b"OUTSIDE-ORIGINAL"
FILE = "0004f2000001.cfg"
KINDS = ["local", "http", "ftp", "sftp"]

# names no publisher may pass on: empty or directory-like, escaping, separators, NUL/control bytes, > 255 bytes
BAD_NAMES = ["", ".", "..", "../escape.cfg", "sub/x.cfg", "/etc/passwd", "a\\b.cfg", "a\x00b.cfg", "a\nb.cfg",
             "x" * 252 + ".cfg", "\u00e9" * 128]


@dataclass
class Boot:
    kind: str
    url: str
    root: Path
    creds: Credentials


def _wait_listening(port: int) -> None:
    wait_until(lambda: listening(("127.0.0.1", port)), 10, f"something listening on 127.0.0.1:{port}", step=0.05)


class LoopThread:
    """An event loop on a thread of its own, for the asyncio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="sftp-boot")
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def tree(top: Path) -> dict[str, tuple]:
    """Everything under `top` without following links: path -> (kind, content or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", path.read_bytes())
    return out


@pytest.fixture
def outside(tmp_path) -> Path:
    path = tmp_path / "outside.txt"
    path.write_bytes(OUTSIDE)
    return path


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "http"
    root.mkdir()
    port = free_port()
    server = HttpBootServerProcess(root, "127.0.0.1", port, USER, PASSWORD)
    asyncio.run(server.start())
    yield Boot("http", f"http://127.0.0.1:{port}/", root, Credentials(USER, PASSWORD))
    asyncio.run(server.stop())


@pytest.fixture
def ftp_factory(tmp_path):
    servers = []

    def start(perm: str = "elradfmw") -> Boot:
        root = tmp_path / f"ftp{len(servers)}"
        root.mkdir()
        port = free_port()
        server = FtpBootServer(root, "127.0.0.1", port, USER, PASSWORD, perm=perm)
        server.start()
        servers.append(server)
        _wait_listening(port)
        return Boot("ftp", f"ftp://127.0.0.1:{port}/", root, Credentials(USER, PASSWORD))

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def ftp_server(ftp_factory) -> Boot:
    return ftp_factory()


@pytest.fixture
def sftp_lab(tmp_path, monkeypatch):
    root = tmp_path / "sftp"
    root.mkdir()
    port = free_port()
    loops = LoopThread()
    server = SftpBootServer(root, "127.0.0.1", port, USER, PASSWORD)
    loops.run(server.start())
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    monkeypatch.setenv("FLEET_SFTP_KNOWN_HOSTS", str(known))
    yield Boot("sftp", f"sftp://127.0.0.1:{port}/", root, Credentials(USER, PASSWORD)), server
    loops.run(server.stop())
    loops.close()


@pytest.fixture
def sftp_server(sftp_lab) -> Boot:
    return sftp_lab[0]


@pytest.fixture
def local_dir(tmp_path) -> Boot:
    root = tmp_path / "local"
    root.mkdir()
    return Boot("local", f"file://{root}/", root, Credentials())


@pytest.fixture(params=KINDS)
def boot(request) -> Boot:
    return request.getfixturevalue({"local": "local_dir", "http": "http_server", "ftp": "ftp_server",
                                    "sftp": "sftp_server"}[request.param])


@pytest.fixture
def pub(boot):
    publisher = open_publisher(boot.url, boot.creds)
    yield publisher
    publisher.close()


def _names_file(exc: BaseException, name: str, publisher) -> None:
    text = str(exc)
    assert publisher.name in text, text
    assert repr(name[:40])[:-1] in text, f"{text!r} does not name {name[:40]!r}"
    assert PASSWORD not in text


# --- the name check every publisher runs first ----------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="./\\\x00\n\x7fa\u00e9\ud800", max_size=300),
                 st.binary(max_size=10), st.integers(), st.none()))
def test_check_name_accepts_only_plain_names(name):
    try:
        assert check_name("boot server x", name) == name
    except UnsafeName as exc:
        assert str(exc).startswith("boot server x: ")
        return
    assert name not in ("", ".", "..") and "/" not in name and "\\" not in name
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES


# --- every publisher -------------------------------------------------------------------------------

def test_roundtrip_replaces_and_leaves_no_temporary_file(boot, pub):
    pub.write(FILE, b"<one/>")
    pub.write(FILE, b"<two/>")
    assert pub.read(FILE) == b"<two/>"
    assert os.listdir(boot.root) == [FILE], "a temporary file was left behind"
    pub.delete(FILE)
    pub.delete(FILE)   # deleting what is already gone is not an error
    assert pub.read(FILE) is None
    assert os.listdir(boot.root) == []


def test_a_file_longer_than_the_bound_is_refused_naming_it(boot, pub, monkeypatch):
    """The boot server is untrusted input: a read stops at MAX_FILE_BYTES (patched small here) and says which file;
    a file of exactly the bound is read whole."""
    from fleet.drivers.publish import ftp, http_put, local, sftp, size

    for module in (size, http_put, ftp, sftp, local):
        monkeypatch.setattr(module, "MAX_FILE_BYTES", 4000)
    (boot.root / FILE).write_bytes(b"x" * 4000)
    assert pub.read(FILE) == b"x" * 4000
    (boot.root / FILE).write_bytes(b"x" * 70_000)
    with pytest.raises(DeviceRefused, match="longer than 4000 bytes") as exc:
        pub.read(FILE)
    _names_file(exc.value, FILE, pub)
    # the publisher goes on serving the task (FTP logs in again after the transfer it cut off)
    pub.write(FILE, b"<small/>")
    assert pub.read(FILE) == b"<small/>"


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:24])
def test_unsafe_names_are_refused_before_any_io(boot, pub, name, tmp_path):
    before = tree(tmp_path)
    for op, args in (("read", (name,)), ("write", (name, b"pwned")), ("delete", (name,))):
        with pytest.raises(UnsafeName) as exc:
            getattr(pub, op)(*args)
        _names_file(exc.value, name, pub)
    assert tree(tmp_path) == before, "a refused name changed files"


@pytest.mark.parametrize("kind", ["http", "ftp", "sftp"])
def test_unsafe_names_are_refused_before_the_server_is_asked(kind, request):
    """With the connection already gone, a bad name still gets its own refusal: nothing was sent first."""
    boot = request.getfixturevalue(f"{kind}_server")
    pub = open_publisher(boot.url, boot.creds)
    try:
        if kind == "ftp":
            pub.ftp.sock.shutdown(socket.SHUT_RDWR)
        elif kind == "sftp":
            pub.client.get_transport().close()
        else:
            from fleet.drivers.lan_http import lan_pool

            pub.base = f"http://127.0.0.1:{free_port()}/"   # nothing listens there
            pub.pool = lan_pool(pub.base, 2.0)
        for name in BAD_NAMES:
            for op, args in (("read", (name,)), ("write", (name, b"x")), ("delete", (name,))):
                with pytest.raises(UnsafeName):
                    getattr(pub, op)(*args)
        with pytest.raises(DriverError) as exc:   # a good name does reach the (gone) server
            pub.read(FILE)
        assert not isinstance(exc.value, UnsafeName)
    finally:
        pub.close()


def test_planted_part_symlink_is_never_written_through(boot, pub, outside):
    (boot.root / f"{FILE}.part").symlink_to(outside)
    pub.write(FILE, b"<new/>")
    assert outside.read_bytes() == OUTSIDE, "the publisher wrote through a planted .part symlink"
    target = boot.root / FILE
    assert not target.is_symlink() and target.read_bytes() == b"<new/>"
    assert sorted(os.listdir(boot.root)) == [FILE, f"{FILE}.part"], "a temporary file was left behind"


def test_symlink_at_the_target_is_never_followed(boot, pub, outside):
    target = boot.root / FILE
    target.symlink_to(outside)
    with pytest.raises(DriverError) as exc:   # neither the outside content nor "absent"
        pub.read(FILE)
    _names_file(exc.value, FILE, pub)
    try:
        pub.write(FILE, b"<new/>")
    except DriverError as err:   # a server may refuse to replace the link; it must not write through it
        _names_file(err, FILE, pub)
    else:
        assert not target.is_symlink() and target.read_bytes() == b"<new/>"
    assert outside.read_bytes() == OUTSIDE, "the publisher wrote through a symlink at the target's name"
    assert os.listdir(boot.root) == [FILE], "a temporary file was left behind"


def test_symlink_at_the_target_is_not_deleted_through(boot, pub, outside):
    (boot.root / FILE).symlink_to(outside)
    try:
        pub.delete(FILE)
    except DriverError as err:
        _names_file(err, FILE, pub)
    assert outside.read_bytes() == OUTSIDE


def test_directory_at_the_target_is_refused(boot, pub):
    target = boot.root / FILE
    target.mkdir()
    (target / "keep").write_bytes(b"keep")
    for op, args in (("read", (FILE,)), ("write", (FILE, b"<new/>")), ("delete", (FILE,))):
        with pytest.raises(DriverError) as exc:
            getattr(pub, op)(*args)
        _names_file(exc.value, FILE, pub)
    assert (target / "keep").read_bytes() == b"keep"
    assert os.listdir(boot.root) == [FILE], "a temporary file was left behind"


# --- the HTTP boot server itself -------------------------------------------------------------------

def _request(boot: Boot, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    port = int(boot.url.rsplit(":", 1)[1].strip("/"))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)   # sends the path as given, unnormalised
    try:
        conn.request(method, path, body=body, headers=auth)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


BAD_REQUESTS = [("PUT", "/"), ("DELETE", "/"), ("PUT", "/sub"), ("PUT", "/sub/"), ("DELETE", "/sub"),
                ("PUT", "/a%00b.cfg"), ("GET", "/a%00b.cfg"), ("DELETE", "/a%00b.cfg"), ("PUT", "/sub/%00"),
                ("PUT", "/" + "a" * 256), ("GET", "/" + "a" * 256), ("DELETE", "/" + "a" * 256),
                ("PUT", "/sub/" + "b" * 256), ("PUT", "/" + "%C3%A9" * 128), ("PUT", "/" + "c" * 256 + "/x.cfg")]


def test_http_boot_server_refuses_bad_targets_with_4xx(http_server, tmp_path, capfd):
    (http_server.root / "sub").mkdir()
    (http_server.root / "sub" / "keep").write_bytes(b"keep")
    before = tree(tmp_path)
    answers = {(m, p[:30]): _request(http_server, m, p, b"pwned" if m == "PUT" else None) for m, p in BAD_REQUESTS}
    wrong = {k: v for k, v in answers.items() if not 400 <= v[0] < 500 or b"Traceback" in v[1]}
    assert not wrong, f"expected a 4xx without traceback: {wrong}"
    assert tree(tmp_path) == before, "a refused request changed files"
    assert "Traceback" not in capfd.readouterr().err


def test_http_boot_server_never_follows_symlinks(http_server, tmp_path, outside):
    root = http_server.root
    (root / f"{FILE}.part").symlink_to(outside)
    assert _request(http_server, "PUT", f"/{FILE}", b"<new/>")[0] == 201
    assert (root / FILE).read_bytes() == b"<new/>" and outside.read_bytes() == OUTSIDE

    (root / "link.cfg").symlink_to(outside)
    status, body = _request(http_server, "GET", "/link.cfg")
    assert OUTSIDE not in body and 400 <= status < 500, status
    status, _ = _request(http_server, "PUT", "/link.cfg", b"<new/>")
    assert status == 201 and not (root / "link.cfg").is_symlink() or status == 403, status
    assert outside.read_bytes() == OUTSIDE

    (root / "linkdir").symlink_to(tmp_path)
    status, _ = _request(http_server, "PUT", "/linkdir/x.cfg", b"pwned")
    assert 400 <= status < 500 and not (tmp_path / "x.cfg").exists(), status
    status, _ = _request(http_server, "DELETE", "/linkdir/outside.txt")
    assert 400 <= status < 500 and outside.read_bytes() == OUTSIDE, status
    assert not [n for n in os.listdir(root) if n.endswith(".part") and n != f"{FILE}.part"]


# --- the FTP boot server and publisher -------------------------------------------------------------

def test_ftp_boot_server_refuses_bad_names_without_a_traceback(ftp_server, caplog):
    caplog.set_level(logging.WARNING, logger="pyftpdlib")
    port = int(ftp_server.url.rsplit(":", 1)[1].strip("/"))
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login(USER, PASSWORD)
        ftp.voidcmd("TYPE I")
        for cmd in ("STOR /a\x00b.cfg", "RETR /a\x00b.cfg", "DELE /a\x00b.cfg", "SIZE /a\x00b.cfg",
                    "STOR /" + "a" * 256, "DELE /" + "a" * 256, "MKD /" + "d" * 256):
            with pytest.raises(ftplib.error_perm):
                if cmd.startswith("STOR"):
                    ftp.storbinary(cmd, io.BytesIO(b"pwned"))
                elif cmd.startswith("RETR"):
                    ftp.retrbinary(cmd, lambda b: None)
                else:
                    ftp.voidcmd(cmd)
            ftp.voidcmd("NOOP")   # the session survived
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert os.listdir(ftp_server.root) == []


@pytest.mark.parametrize("perm, op", [
    ("elrafmw", "delete"),   # this user may not delete
    ("elwadfm", "read"),     # may list, not retrieve
])
def test_ftp_refused_by_the_server_raises_and_is_not_taken_for_absent(ftp_factory, perm, op):
    boot = ftp_factory(perm=perm)
    (boot.root / FILE).write_bytes(b"<old/>")
    pub = open_publisher(boot.url, boot.creds)
    try:
        with pytest.raises(DeviceRefused) as exc:
            getattr(pub, op)(FILE)
        _names_file(exc.value, FILE, pub)
        # a 550 for a file that really is absent is fine: delete does nothing, read says None
        assert getattr(pub, op)("never-there.cfg") is None
    finally:
        pub.close()
    assert (boot.root / FILE).read_bytes() == b"<old/>"


def test_ftp_connection_lost_mid_session_is_a_driver_error(ftp_server):
    pub = open_publisher(ftp_server.url, ftp_server.creds)
    pub.ftp.sock.shutdown(socket.SHUT_RDWR)
    for op, args in (("read", (FILE,)), ("write", (FILE, b"x")), ("delete", (FILE,))):
        with pytest.raises(DriverError) as exc:
            getattr(pub, op)(*args)
        _names_file(exc.value, FILE, pub)
    pub.close()


# --- the SFTP publisher ----------------------------------------------------------------------------

def test_sftp_missing_known_hosts_is_a_driver_error(sftp_server, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir" / "known_hosts"
    monkeypatch.setenv("FLEET_SFTP_KNOWN_HOSTS", str(missing))
    with pytest.raises(DriverError) as exc:
        open_publisher(sftp_server.url, sftp_server.creds)
    assert "known_hosts" in str(exc.value) and str(missing) in str(exc.value), str(exc.value)
    assert PASSWORD not in str(exc.value)


def test_sftp_unknown_host_key_is_refused(sftp_server, tmp_path, monkeypatch):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    monkeypatch.setenv("FLEET_SFTP_KNOWN_HOSTS", str(empty))
    with pytest.raises(HostKeyUnknown) as exc:
        open_publisher(sftp_server.url, sftp_server.creds)
    assert PASSWORD not in str(exc.value)


def test_sftp_wrong_password_is_refused_without_the_password(sftp_server):
    with pytest.raises(DeviceRefused, match="authentication failed") as exc:
        open_publisher(sftp_server.url, Credentials(USER, "wrong-pw-4471"))
    assert "wrong-pw-4471" not in str(exc.value)


def test_sftp_connection_lost_mid_session_is_a_driver_error(sftp_server):
    pub = open_publisher(sftp_server.url, sftp_server.creds)
    pub.client.get_transport().close()
    for op, args in (("read", (FILE,)), ("write", (FILE, b"x")), ("delete", (FILE,))):
        with pytest.raises(DriverError) as exc:
            getattr(pub, op)(*args)
        _names_file(exc.value, FILE, pub)
    pub.close()


# --- a rollout through a publisher that cannot start -----------------------------------------------

@pytest.mark.slow
def test_rollout_fails_phones_at_once_when_sftp_known_hosts_is_missing(tmp_path, redis_url, worker_factory, sftp_lab,
                                                                      monkeypatch):
    """The SFTP publisher's setup error settles each phone as failed with that reason, instead of
    leaving it dispatched (and re-sent every 60 s) until the progress deadline."""
    boot, _ = sftp_lab
    (tmp_path / "lab").mkdir()
    lab = start_lab(tmp_path / "lab", lab_spec("sftpkh", phones=2))
    try:
        inv = yaml.safe_load(lab.inventory.read_text())
        inv["sites"][0]["boot_server"]["url"] = boot.url
        inv_path = tmp_path / "inventory-sftp.yml"
        inv_path.write_text(yaml.safe_dump(inv))
        missing = tmp_path / "no-such-dir" / "known_hosts"
        monkeypatch.setenv("FLEET_SFTP_KNOWN_HOSTS", str(missing))   # the worker inherits it
        worker = worker_factory(inv_path, "hq")
        pb = write_rollout_playbook(tmp_path / "rollout.yml", "sftp-known-hosts", canary=0, deadline=90, within=20)
        res = run_fleet(["rollout", "run", str(pb), "--inventory", str(inv_path), "--json"], redis_url, timeout=200)
        out = json.loads(res.stdout)
        status = json.loads(run_fleet(["rollout", "status", out["id"], "--json"], redis_url).stdout)
        phones = status["phones"]
        assert {st["state"] for st in phones.values()} <= {"failed", "rollback_failed"}, phones
        for mac, st in phones.items():
            assert "known_hosts" in st.get("error", "") and str(missing) in st["error"], (mac, st)
        boot_password = yaml.safe_load((lab.state / "secrets.yml").read_text())["boot_hq"]["password"]
        assert boot_password not in res.stdout + res.stderr + json.dumps(status)
        assert "Traceback" not in worker.log.read_text()
    finally:
        lab.down()
