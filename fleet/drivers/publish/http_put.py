"""HTTP GET/PUT/DELETE to the boot server (requests), basic or digest auth."""
from __future__ import annotations

from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from ...inventory import Credentials
from ..errors import DeviceRefused, DeviceTimeout


class HttpPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}{parts.path.rstrip('/')}/"
        self.name = f"boot server {self.base}"
        self.session = requests.Session()
        self.session.auth = HTTPBasicAuth(credentials.username, credentials.password) if credentials.username else None
        self.timeout = timeout

    def _call(self, method: str, filename: str, data: bytes | None = None) -> requests.Response:
        try:
            return self.session.request(method, self.base + quote(filename), data=data, timeout=self.timeout)
        except requests.Timeout:
            raise DeviceTimeout(self.name, f"{method} {filename}: no answer within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise DeviceTimeout(self.name, f"{method} {filename}: {type(exc).__name__}") from None

    def read(self, filename: str) -> bytes | None:
        resp = self._call("GET", filename)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise DeviceRefused(self.name, f"GET {filename}: HTTP {resp.status_code}")
        return resp.content

    def write(self, filename: str, data: bytes) -> None:
        resp = self._call("PUT", filename, data)
        if resp.status_code not in (200, 201, 204):
            raise DeviceRefused(self.name, f"PUT {filename}: HTTP {resp.status_code}")

    def delete(self, filename: str) -> None:
        resp = self._call("DELETE", filename)
        if resp.status_code not in (200, 202, 204, 404):
            raise DeviceRefused(self.name, f"DELETE {filename}: HTTP {resp.status_code}")

    def close(self) -> None:
        self.session.close()


def open(url: str, credentials: Credentials, timeout: float) -> HttpPublisher:  # noqa: A001
    return HttpPublisher(url, credentials, timeout)
