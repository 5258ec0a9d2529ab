"""The lab's FTP boot servers in one process stand apart: pyftpdlib keeps ThreadedFTPServer's stop flag on the
class, so stopping one server ended the sessions of every other, and one started just after a stop dropped its
first connections (EOF before the banner, seen under two test suites' load)."""
from __future__ import annotations

import ftplib

from conftest import free_port, wait_until
from hil.bootserver import FtpBootServer
from hil.harness import listening


def _server(tmp_path, name: str) -> tuple[FtpBootServer, int]:
    root = tmp_path / name
    root.mkdir()
    (root / "a.cfg").write_text("<A/>")
    port = free_port()
    server = FtpBootServer(root, "127.0.0.1", port, "PlcmSpIp", "pw-1")
    server.start()
    wait_until(lambda: listening(("127.0.0.1", port)), 10, f"the FTP boot server on {port}", step=0.05)
    return server, port


def _session(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=10)
    ftp.connect("127.0.0.1", port)
    ftp.login("PlcmSpIp", "pw-1")
    return ftp


def test_stopping_one_ftp_boot_server_leaves_the_others_sessions_and_a_new_one_serves_at_once(tmp_path):
    first, p1 = _server(tmp_path, "one")
    second, p2 = _server(tmp_path, "two")
    kept = _session(p2)
    try:
        first.stop()
        assert kept.nlst() == ["a.cfg"], "the other server's open session goes on"
        third, p3 = _server(tmp_path, "three")      # started right after a stop: its first connection is served
        try:
            fresh = _session(p3)
            assert fresh.nlst() == ["a.cfg"]
            fresh.quit()
        finally:
            third.stop()
        assert kept.nlst() == ["a.cfg"]
    finally:
        kept.close()
        second.stop()
