"""HTTP GET/PUT/DELETE to the boot server (requests), basic or digest auth.

Names are checked before any request (names.check_name) and sent as one
percent-encoded path segment, so no name can address anything but a file in
the boot directory; the server itself writes atomically.
"""
from __future__ import annotations

from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from ...inventory import Credentials
from ..errors import DeviceRefused, DeviceTimeout
from .names import check_name, shown


class HttpPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}{parts.path.rstrip('/')}/"
        self.name = f"boot server {self.base}"
        self.session = requests.Session()
        self.session.auth = HTTPBasicAuth(credentials.username, credentials.password) if credentials.username else None
        self.timeout = timeout

    def _call(self, method: str, filename: str, data: bytes | None = None) -> requests.Response:
        name = check_name(self.name, filename)
        try:
            return self.session.request(method, self.base + quote(name, safe=""), data=data, timeout=self.timeout)
        except requests.Timeout:
            raise DeviceTimeout(self.name, f"{method} {shown(name)}: no answer within {self.timeout:g}s") from None
        except (requests.RequestException, OSError, ValueError) as exc:
            raise DeviceTimeout(self.name, f"{method} {shown(name)}: {type(exc).__name__}") from None

    def read(self, filename: str) -> bytes | None:
        resp = self._call("GET", filename)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise DeviceRefused(self.name, f"GET {shown(filename)}: HTTP {resp.status_code}{_why(resp)}")
        return resp.content

    def write(self, filename: str, data: bytes) -> None:
        resp = self._call("PUT", filename, data)
        if resp.status_code not in (200, 201, 204):
            raise DeviceRefused(self.name, f"PUT {shown(filename)}: HTTP {resp.status_code}{_why(resp)}")

    def delete(self, filename: str) -> None:
        resp = self._call("DELETE", filename)
        if resp.status_code not in (200, 202, 204, 404):
            raise DeviceRefused(self.name, f"DELETE {shown(filename)}: HTTP {resp.status_code}{_why(resp)}")

    def close(self) -> None:
        self.session.close()


def _why(resp: requests.Response) -> str:
    """The server's one-line reason for a refusal, when it sent a short plain-text one."""
    if not resp.headers.get("Content-Type", "").startswith("text/plain"):
        return ""
    text = resp.text.strip().splitlines()[0][:80] if resp.text.strip() else ""
    return f" ({text})" if text.isprintable() and text else ""


def open(url: str, credentials: Credentials, timeout: float) -> HttpPublisher:  # noqa: A001
    return HttpPublisher(url, credentials, timeout)
