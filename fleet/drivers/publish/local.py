"""A boot server directory on this host (file:///srv/boot/): atomic replace, confined to the directory.

Every operation goes through a descriptor of the directory opened once, with
names checked first (names.check_name) and symlinks never followed: a
symlink at the target's name is replaced, not written through; one planted
under a temporary name cannot matter, because temporary files get a fresh
random name and are created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fleet.config.inventory import Credentials
from fleet.drivers.errors import DeviceRefused
from fleet.drivers.publish.base import DirectoryPublisher
from fleet.drivers.publish.size import MAX_FILE_BYTES, too_long
from fleet.drivers.publish.names import check_name, shown, temp_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class LocalPublisher(DirectoryPublisher):
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        raw = unquote(urlsplit(url).path)
        self.name = f"boot directory {raw!r:.200}"
        if "\0" in raw or not raw:
            raise DeviceRefused(self.name, "not a usable directory path")
        self.root = Path(raw).resolve()
        self.name = f"boot directory {self.root}"
        try:
            self.dir_fd: int | None = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise DeviceRefused(self.name, f"cannot open the directory: {exc.strerror or type(exc).__name__}") from None

    def _fd(self) -> int:
        if self.dir_fd is None:
            raise DeviceRefused(self.name, "publisher already closed")
        return self.dir_fd

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self._fd(), follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _failure(self, verb: str, filename: str, exc: OSError) -> DeviceRefused:
        return DeviceRefused(self.name, f"cannot {verb} {shown(filename)}: {exc.strerror or type(exc).__name__}")

    def read(self, filename: str) -> bytes | None:
        name = check_name(self.name, filename)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd())
        except FileNotFoundError:
            return None
        except OSError as exc:
            st = self._lstat(name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise DeviceRefused(self.name, f"{shown(name)} is a symbolic link: fleet does not read through it") from None
            raise self._failure("read", name, exc) from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
                raise DeviceRefused(self.name, f"{shown(name)} is {kind}")
            chunks, size = [], 0
            while chunk := os.read(fd, 1 << 20):
                size += len(chunk)
                if size > MAX_FILE_BYTES:      # a file that grows as it is read
                    raise too_long(self.name, name)
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise self._failure("read", name, exc) from None
        finally:
            os.close(fd)

    def write(self, filename: str, data: bytes) -> None:
        name = check_name(self.name, filename)
        try:
            st = self._lstat(name)
        except OSError as exc:
            raise self._failure("write", name, exc) from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise DeviceRefused(self.name, f"cannot write {shown(name)}: it is a directory")
        keep_mode = stat.S_IMODE(st.st_mode) if st is not None and stat.S_ISREG(st.st_mode) else None
        tmp = temp_name()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=self._fd())
        except OSError as exc:
            raise self._failure("write", name, exc) from None
        try:
            with os.fdopen(fd, "wb") as f:
                if keep_mode is not None:
                    os.fchmod(f.fileno(), keep_mode)   # a replaced file keeps the permissions the site gave it
                f.write(data)
                f.flush()
                os.fsync(f.fileno())   # the rename must not land before the data does
            os.rename(tmp, name, src_dir_fd=self._fd(), dst_dir_fd=self._fd())   # replaces a symlink, never follows it
        except OSError as exc:
            self._discard(tmp)
            raise self._failure("write", name, exc) from None
        except BaseException:
            self._discard(tmp)
            raise

    def _discard(self, tmp: str) -> None:
        try:
            os.unlink(tmp, dir_fd=self._fd())
        except OSError:
            pass

    def _unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self._fd())

    def close(self) -> None:
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


def open(url: str, credentials: Credentials, timeout: float) -> LocalPublisher:  # noqa: A001
    return LocalPublisher(url, credentials, timeout)
