"""SFTP to the boot server (paramiko), host key checked like the routers' (known_hosts)."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import paramiko

from ...inventory import Credentials
from ..errors import DeviceRefused, DeviceTimeout, HostKeyUnknown


class SftpPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.name = f"boot server sftp://{parts.hostname}:{parts.port or 22}"
        self.dir = parts.path.rstrip("/") or "."
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(os.path.expanduser(os.environ.get("FLEET_SFTP_KNOWN_HOSTS", "~/.ssh/known_hosts")))
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.client.connect(parts.hostname, port=parts.port or 22, username=credentials.username,
                                password=credentials.password or None, key_filename=credentials.key_file or None,
                                timeout=timeout, look_for_keys=False, allow_agent=False)
        except paramiko.BadHostKeyException:
            raise HostKeyUnknown(self.name, "host key does not match known_hosts") from None
        except paramiko.AuthenticationException:
            raise DeviceRefused(self.name, "authentication failed") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyUnknown(self.name, "host key not in known_hosts") from None
            raise DeviceRefused(self.name, f"SSH error: {type(exc).__name__}") from None
        except (socket.timeout, OSError) as exc:
            raise DeviceTimeout(self.name, f"cannot connect ({type(exc).__name__})") from None
        self.sftp = self.client.open_sftp()

    def read(self, filename: str) -> bytes | None:
        try:
            with self.sftp.open(f"{self.dir}/{filename}", "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, filename: str, data: bytes) -> None:
        tmp = f"{self.dir}/{filename}.part"
        with self.sftp.open(tmp, "wb") as f:
            f.write(data)
        self.sftp.posix_rename(tmp, f"{self.dir}/{filename}")

    def delete(self, filename: str) -> None:
        try:
            self.sftp.remove(f"{self.dir}/{filename}")
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.client.close()


def open(url: str, credentials: Credentials, timeout: float) -> SftpPublisher:  # noqa: A001
    return SftpPublisher(url, credentials, timeout)
