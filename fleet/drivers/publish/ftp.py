"""FTP to the boot server (ftplib): upload under a fresh temporary name, then rename over the target.

FTP has no exclusive create, so the temporary name is random (128 bits) and
cannot be planted beforehand; the rename replaces whatever has the target's
name (a symlink included) on the server's side, it never writes through it.

FTP answers 550 both for "no such file" and for "permission denied". A read
or delete takes a 550 for "absent" only when the reply says so or when the
file is confirmed missing another way (SIZE, then a listing of that name);
otherwise the refusal is raised, so a rollback never "succeeds" while the
file it had to remove is still there.
"""
from __future__ import annotations

import ftplib
import io
import re
import socket
import time
from urllib.parse import urlsplit

from fleet.config.inventory import Credentials
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, DriverError
from fleet.drivers.publish.names import check_name, shown, temp_name
from fleet.drivers.publish.size import MAX_FILE_BYTES, too_long

_NOT_FOUND = re.compile(r"no such file|not found|cannot find|does not exist|doesn't exist|no files found|not exist",
                        re.IGNORECASE)


def _reply(exc: BaseException) -> str:
    """The server's reply, short and printable, for an error message."""
    text = " ".join(str(exc).split())[:100]
    return "".join(c if c.isprintable() else "?" for c in text)


class _CutOff(Exception):
    """A RETR stopped by the reader (too long, too slow): carries the error to raise."""

    def __init__(self, error: DriverError) -> None:
        super().__init__(str(error))
        self.error = error


class FtpPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.name = f"boot server ftp://{parts.hostname}:{parts.port or 21}"
        self.dir = parts.path.rstrip("/")
        self.timeout = timeout
        self._address, self._credentials = (parts.hostname, parts.port or 21), credentials
        self._connect()

    def _connect(self) -> None:
        """Log in (again, after a transfer was cut off: `_open`)."""
        credentials = self._credentials
        self.ftp = ftplib.FTP(timeout=self.timeout)
        try:
            self.ftp.connect(*self._address)
            self.ftp.login(credentials.username or "anonymous", credentials.password)
            self.home = self.ftp.pwd()
        except ftplib.error_perm:
            self.ftp.close()
            raise DeviceRefused(self.name, "login refused") from None
        except ftplib.Error as exc:
            self.ftp.close()
            raise DeviceRefused(self.name, f"login refused ({_reply(exc)[:3]})") from None
        except (OSError, EOFError) as exc:
            self.ftp.close()
            raise DeviceTimeout(self.name, f"cannot connect ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None

    def _open(self) -> None:
        """A transfer cut off (too long, too slow) closed the connection mid-reply: the next request logs in again."""
        if self.ftp.sock is None:
            self._connect()

    def _path(self, filename: str) -> str:
        return f"{self.dir}/{filename}"

    def _failure(self, verb: str, filename: str, exc: BaseException) -> DriverError:
        """Any ftplib error as a DriverError naming the file: refusals with the reply, the rest as a lost connection."""
        if isinstance(exc, (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply)):
            return DeviceRefused(self.name, f"{verb} {shown(filename)}: {_reply(exc)}")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return DeviceTimeout(self.name, f"{verb} {shown(filename)}: no answer in time")
        return DeviceTimeout(self.name, f"{verb} {shown(filename)}: connection lost ({type(exc).__name__})")

    def _absent(self, filename: str, refusal: ftplib.error_perm) -> bool:
        """Whether a 550 to RETR/DELE means the file is not there (and not: we may not touch it)."""
        if not str(refusal).startswith("550"):
            return False
        if _NOT_FOUND.search(str(refusal)):
            return True
        path = self._path(filename)
        try:
            self.ftp.voidcmd("TYPE I")   # some servers refuse SIZE in ASCII mode
            self.ftp.sendcmd(f"SIZE {path}")
            return False   # it has a size: it exists
        except ftplib.error_perm:
            pass
        listed: list[str] = []
        deadline = time.monotonic() + 3 * self.timeout

        def line(text: str) -> None:   # a listing is untrusted too: one line is all this needs
            listed.append(text)
            if len(listed) > 1 or time.monotonic() > deadline:
                raise _CutOff(DeviceRefused(self.name, "listing cut off"))
        try:
            self.ftp.retrlines(f"NLST {path}", line)
        except (ftplib.error_perm, ftplib.error_temp) as exc:
            return bool(_NOT_FOUND.search(str(exc)))
        except _CutOff:
            self.ftp.close()       # mid-reply: the next request logs in again (`_open`)
        return not listed   # a name listed (or a directory's content) means something is there

    def _is_directory(self, path: str) -> bool:
        try:
            self.ftp.cwd(path)
        except ftplib.error_perm:
            return False
        self.ftp.cwd(self.home)
        return True

    def read(self, filename: str) -> bytes | None:
        """The file's bytes (None when absent): at most MAX_FILE_BYTES, within three timeouts in all. A transfer
        cut off for either leaves the control connection mid-reply, so it is closed: the push fails with why."""
        name = check_name(self.name, filename)
        self._open()
        buf = io.BytesIO()
        deadline = time.monotonic() + 3 * self.timeout

        def take(chunk: bytes) -> None:
            if buf.tell() + len(chunk) > MAX_FILE_BYTES:
                raise _CutOff(too_long(self.name, name))
            if time.monotonic() > deadline:
                raise _CutOff(DeviceTimeout(self.name, f"RETR {shown(name)}: the file was not complete in time"))
            buf.write(chunk)
        try:
            try:
                self.ftp.retrbinary(f"RETR {self._path(name)}", take)
            except ftplib.error_perm as exc:
                if self._absent(name, exc):
                    return None
                raise
        except _CutOff as cut:
            self.ftp.close()
            raise cut.error from None
        except ftplib.all_errors as exc:
            raise self._failure("RETR", name, exc) from None
        return buf.getvalue()

    def write(self, filename: str, data: bytes) -> None:
        name = check_name(self.name, filename)
        self._open()
        target, tmp = self._path(name), self._path(temp_name())
        try:
            if self._is_directory(target):
                raise DeviceRefused(self.name, f"cannot write {shown(name)}: it is a directory on the server")
        except ftplib.all_errors as exc:
            raise self._failure("CWD", name, exc) from None
        verb = "STOR"
        try:
            self.ftp.storbinary(f"STOR {tmp}", io.BytesIO(data))
            verb = "RNTO"
            self.ftp.rename(tmp, target)
        except ftplib.all_errors as exc:
            self._discard(tmp)
            raise self._failure(verb, name, exc) from None

    def _discard(self, tmp: str) -> None:
        """Best effort: a temporary file must not stay behind after a failed upload or rename."""
        try:
            self.ftp.delete(tmp)
        except ftplib.all_errors:
            pass

    def delete(self, filename: str) -> None:
        name = check_name(self.name, filename)
        self._open()
        try:
            try:
                self.ftp.delete(self._path(name))
            except ftplib.error_perm as exc:
                if self._absent(name, exc):
                    return
                raise DeviceRefused(self.name, f"DELE {shown(name)}: {_reply(exc)}; the file is still there "
                                               "or its absence could not be confirmed") from None
        except ftplib.all_errors as exc:
            raise self._failure("DELE", name, exc) from None

    def close(self) -> None:
        if self.ftp.sock is None:     # closed already (a transfer cut off)
            return
        try:
            self.ftp.quit()
        except ftplib.all_errors:
            self.ftp.close()


def open(url: str, credentials: Credentials, timeout: float) -> FtpPublisher:  # noqa: A001
    return FtpPublisher(url, credentials, timeout)
