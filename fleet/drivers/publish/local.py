"""A boot server directory on this host (file:///srv/boot/): atomic replace, confined to the directory."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ...inventory import Credentials
from ..errors import DeviceRefused


class LocalPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        self.root = Path(unquote(urlsplit(url).path)).resolve()
        self.name = f"boot directory {self.root}"
        if not self.root.is_dir():
            raise DeviceRefused(self.name, "not a directory")

    def _path(self, filename: str) -> Path:
        path = (self.root / filename).resolve()
        if path.parent != self.root:
            raise DeviceRefused(self.name, f"{filename!r} is outside the boot directory")
        return path

    def read(self, filename: str) -> bytes | None:
        path = self._path(filename)
        return path.read_bytes() if path.is_file() else None

    def write(self, filename: str, data: bytes) -> None:
        path = self._path(filename)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def delete(self, filename: str) -> None:
        self._path(filename).unlink(missing_ok=True)

    def close(self) -> None:
        return None


def open(url: str, credentials: Credentials, timeout: float) -> LocalPublisher:  # noqa: A001
    return LocalPublisher(url, credentials, timeout)
