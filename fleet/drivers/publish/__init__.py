"""Publishers to the boot server: one module per protocol, chosen by the boot server URL's scheme.

Each module exposes `open(url, credentials, timeout) -> Publisher`. Writes are
whole files; a phone never reads a half-written one (HTTP PUT and the local
directory replace atomically; FTP/SFTP upload to a fresh temporary name and
rename). Every name is checked before any I/O (names.check_name): a publisher
only ever touches plain file names in its one directory, never follows a
symlink to write, and reports every failure as a DriverError naming itself and
the file, never a password.
"""
from __future__ import annotations

import importlib
from typing import Protocol
from urllib.parse import urlsplit

from fleet.config.inventory import Credentials
from soundpoint.redact import redact_url

SCHEMES = {"http": "http_put", "https": "http_put", "ftp": "ftp", "sftp": "sftp", "file": "local"}


class Publisher(Protocol):
    name: str

    def read(self, filename: str) -> bytes | None:
        """The file's content, or None only when it is confirmed absent."""
    def write(self, filename: str, data: bytes) -> None: ...
    def delete(self, filename: str) -> None: ...
    def close(self) -> None: ...


def open_publisher(url: str, credentials: Credentials, timeout: float = 10.0) -> Publisher:
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(f"boot server URL {redact_url(url)}: no publisher for scheme {scheme!r}")
    return importlib.import_module(f"{__name__}.{SCHEMES[scheme]}").open(url, credentials, timeout)
