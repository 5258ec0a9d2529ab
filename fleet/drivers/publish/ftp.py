"""FTP to the boot server (ftplib): upload to a temporary name, then rename."""
from __future__ import annotations

import ftplib
import io
import socket
from urllib.parse import urlsplit

from ...inventory import Credentials
from ..errors import DeviceRefused, DeviceTimeout


class FtpPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.name = f"boot server ftp://{parts.hostname}:{parts.port or 21}"
        self.dir = parts.path.rstrip("/")
        try:
            self.ftp = ftplib.FTP(timeout=timeout)
            self.ftp.connect(parts.hostname, parts.port or 21)
            self.ftp.login(credentials.username or "anonymous", credentials.password)
        except (socket.timeout, TimeoutError, OSError) as exc:
            raise DeviceTimeout(self.name, f"cannot connect ({type(exc).__name__})") from None
        except ftplib.Error:
            raise DeviceRefused(self.name, "login refused") from None

    def _path(self, filename: str) -> str:
        return f"{self.dir}/{filename}"

    def read(self, filename: str) -> bytes | None:
        buf = io.BytesIO()
        try:
            self.ftp.retrbinary(f"RETR {self._path(filename)}", buf.write)
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                return None
            raise DeviceRefused(self.name, f"RETR {filename}: {str(exc)[:80]}") from None
        except (OSError, ftplib.Error) as exc:
            raise DeviceTimeout(self.name, f"RETR {filename}: {type(exc).__name__}") from None
        return buf.getvalue()

    def write(self, filename: str, data: bytes) -> None:
        tmp = self._path(filename + ".part")
        try:
            self.ftp.storbinary(f"STOR {tmp}", io.BytesIO(data))
            self.ftp.rename(tmp, self._path(filename))
        except ftplib.error_perm as exc:
            raise DeviceRefused(self.name, f"STOR {filename}: {str(exc)[:80]}") from None
        except (OSError, ftplib.Error) as exc:
            raise DeviceTimeout(self.name, f"STOR {filename}: {type(exc).__name__}") from None

    def delete(self, filename: str) -> None:
        try:
            self.ftp.delete(self._path(filename))
        except ftplib.error_perm:
            pass

    def close(self) -> None:
        try:
            self.ftp.quit()
        except (OSError, ftplib.Error):
            self.ftp.close()


def open(url: str, credentials: Credentials, timeout: float) -> FtpPublisher:  # noqa: A001
    return FtpPublisher(url, credentials, timeout)
