"""SFTP to the boot server (paramiko), host key checked like the routers' (known_hosts).

The host key is always verified against FLEET_SFTP_KNOWN_HOSTS (default
~/.ssh/known_hosts); an unknown key is refused. Every failure, from a missing
known_hosts file to a connection dropped mid-transfer, is a DriverError that
names the boot server (and the file) and never carries a password: a rollout
then fails the phone at once with the right reason instead of leaving it
dispatched and sending it again.

Uploads go to a fresh random name created exclusively (SFTP's CREAT|EXCL, which
a planted symlink also fails) and are renamed over the target with the
posix-rename extension, which replaces a symlink rather than following it.
"""
from __future__ import annotations

import os
import socket
import stat
from urllib.parse import urlsplit

import paramiko

from fleet.config.inventory import Credentials
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, DriverError, HostKeyUnknown
from fleet.drivers.publish.base import DirectoryPublisher
from fleet.drivers.publish.names import check_name, shown, temp_name
from fleet.drivers.publish.size import MAX_FILE_BYTES, too_long

# what paramiko and the socket under it raise besides our own errors
_SSH_ERRORS = (paramiko.SSHException, paramiko.SFTPError, OSError, EOFError, socket.timeout)


def known_hosts_path() -> str:
    return os.path.expanduser(os.environ.get("FLEET_SFTP_KNOWN_HOSTS", "~/.ssh/known_hosts"))


class SftpPublisher(DirectoryPublisher):
    ERRORS = _SSH_ERRORS
    A_DIRECTORY = "a directory on the server"

    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.name = f"boot server sftp://{parts.hostname}:{parts.port or 22}"
        self.dir = parts.path.rstrip("/") or "."
        self._secrets = [s for s in (credentials.password, credentials.priv_password) if s]
        known = known_hosts_path()
        self.client = paramiko.SSHClient()
        try:
            self.client.load_host_keys(known)
        except FileNotFoundError:
            raise DriverError(self.name, f"known_hosts file {known} does not exist, so the boot server's host key "
                                         "cannot be checked (set FLEET_SFTP_KNOWN_HOSTS)") from None
        except (OSError, paramiko.SSHException, UnicodeDecodeError, ValueError) as exc:
            raise DriverError(self.name, f"cannot read known_hosts file {known}: {self._why(exc)}") from None
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if credentials.key_file and not os.path.isfile(credentials.key_file):
            raise DriverError(self.name, f"key file {credentials.key_file} does not exist")
        try:
            self.client.connect(parts.hostname, port=parts.port or 22, username=credentials.username,
                                password=credentials.password or None, key_filename=credentials.key_file or None,
                                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                                look_for_keys=False, allow_agent=False)
            self.sftp = self.client.open_sftp()
            self.sftp.get_channel().settimeout(timeout)
        except paramiko.BadHostKeyException:
            self.client.close()
            raise HostKeyUnknown(self.name, "host key does not match known_hosts (possible impersonation)") from None
        except paramiko.AuthenticationException:
            self.client.close()
            raise DeviceRefused(self.name, "authentication failed") from None
        except paramiko.SSHException as exc:
            self.client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyUnknown(self.name, f"host key not in known_hosts file {known}") from None
            raise DeviceRefused(self.name, f"SSH error: {self._why(exc)}") from None
        except (socket.timeout, TimeoutError):
            self.client.close()
            raise DeviceTimeout(self.name, f"no answer within {timeout:g}s") from None
        except (OSError, EOFError) as exc:
            self.client.close()
            raise DeviceTimeout(self.name, f"cannot connect ({self._why(exc)})") from None
        except (ValueError, TypeError, paramiko.SFTPError) as exc:   # e.g. an unreadable private key
            self.client.close()
            raise DriverError(self.name, f"SSH error: {self._why(exc)}") from None

    def _why(self, exc: BaseException) -> str:
        """A short reason without any secret: the exception's text with passwords cut out."""
        text = getattr(exc, "strerror", None) or str(exc) or ""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split())[:100]
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _failure(self, verb: str, filename: str, exc: BaseException) -> DriverError:
        if isinstance(exc, PermissionError):
            return DeviceRefused(self.name, f"{verb} {shown(filename)}: permission denied")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return DeviceTimeout(self.name, f"{verb} {shown(filename)}: no answer in time")
        if isinstance(exc, (paramiko.SSHException, EOFError, ConnectionError)) or "closed" in str(exc).lower():
            return DeviceTimeout(self.name, f"{verb} {shown(filename)}: connection lost ({self._why(exc)})")
        return DeviceRefused(self.name, f"{verb} {shown(filename)}: {self._why(exc)}")

    def _path(self, filename: str) -> str:
        return f"{self.dir}/{filename}"

    def _lstat(self, name: str) -> paramiko.SFTPAttributes | None:
        try:
            return self.sftp.lstat(self._path(name))
        except FileNotFoundError:
            return None

    def read(self, filename: str) -> bytes | None:
        name = check_name(self.name, filename)
        try:
            st = self._lstat(name)
            if st is None:
                return None
            if stat.S_ISLNK(st.st_mode or 0):
                raise DeviceRefused(self.name, f"{shown(name)} is a symbolic link: fleet does not read through it")
            if stat.S_ISDIR(st.st_mode or 0):
                raise DeviceRefused(self.name, f"{shown(name)} is a directory")
            if (st.st_size or 0) > MAX_FILE_BYTES:
                raise too_long(self.name, name)
            with self.sftp.open(self._path(name), "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)     # a file that grew since its stat is cut off here
            if len(data) > MAX_FILE_BYTES:
                raise too_long(self.name, name)
            return data
        except FileNotFoundError:
            return None
        except _SSH_ERRORS as exc:
            raise self._failure("read", name, exc) from None

    def write(self, filename: str, data: bytes) -> None:
        name = check_name(self.name, filename)
        try:
            st = self._lstat(name)
        except _SSH_ERRORS as exc:
            raise self._failure("write", name, exc) from None
        if st is not None and stat.S_ISDIR(st.st_mode or 0):
            raise DeviceRefused(self.name, f"cannot write {shown(name)}: it is a directory on the server")
        tmp = self._path(temp_name())
        try:
            with self.sftp.open(tmp, "wbx") as f:   # CREAT|EXCL: never an existing file, never through a link
                f.set_pipelined(True)
                f.write(data)
        except _SSH_ERRORS as exc:
            self._discard(tmp)
            raise self._failure("write", name, exc) from None
        try:
            self.sftp.posix_rename(tmp, self._path(name))
        except _SSH_ERRORS as exc:
            self._discard(tmp)
            raise self._failure("rename onto", name, exc) from None

    def _discard(self, tmp: str) -> None:
        try:
            self.sftp.remove(tmp)
        except _SSH_ERRORS:
            pass

    def _unlink(self, name: str) -> None:
        self.sftp.remove(self._path(name))

    def close(self) -> None:
        try:
            self.client.close()
        except _SSH_ERRORS:
            pass


def open(url: str, credentials: Credentials, timeout: float) -> SftpPublisher:  # noqa: A001
    return SftpPublisher(url, credentials, timeout)
