"""Reading an HTTP answer's body from a device or server on the network: bounded in size and in time.

Every reader of an answer from a phone (REST, state polling, web UI) and from the boot server (the HTTP
publisher) goes through `read_answer`: `resp.content` would load the whole body before any size check, and a
server that drips a byte per timeout would hold the request open for ever. `BoundedDigestAuth` is requests'
digest authentication without its unbounded read of the challenge's body.
"""
from __future__ import annotations

import time

import requests
import urllib3
from requests.auth import HTTPDigestAuth

from fleet.drivers.errors import DeviceTimeout, MalformedAnswer


def read_answer(resp: requests.Response | urllib3.BaseHTTPResponse, limit: int, name: str, what: str,
                deadline: float | None = None) -> bytes:
    """At most `limit + 1` bytes of a streamed answer's body (the caller refuses more as too long), and the response
    closed. The body is read one socket read at a time, so one that drips in is cut off at `deadline` (monotonic
    seconds) rather than held open by a phone sending a byte per timeout. DeviceTimeout when it breaks off or is
    not complete by the deadline. Every reader of an HTTP answer from the network uses this (the module's docstring)."""
    out = bytearray()
    try:
        if isinstance(resp, requests.Response):
            if resp.raw is None or getattr(resp, "_content_consumed", False):
                return bytes(resp.content[:limit + 1])  # not streamed, or already read (bounded) by BoundedDigestAuth
            raw = resp.raw
        else:
            raw = resp      # urllib3's own (the publisher, phone REST): read to its end, its connection is reused
        # every client asks for no compression (lan_http), and a compressed body is refused rather than decoded:
        # urllib3 reads on until its decoder yields something, so empty deflate blocks dripping in would never
        # return to the deadline
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise MalformedAnswer(name, f"{what}: a compressed answer ({encoding[:20]}), which was not asked for")
        while len(out) <= limit:
            if deadline is not None and time.monotonic() > deadline:
                raise DeviceTimeout(name, f"{what}: the answer was not complete in time")
            chunk = raw.read1(min(65536, limit + 1 - len(out)), decode_content=False)
            if not chunk:
                break
            out += chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError):
        raise DeviceTimeout(name, f"{what}: the answer broke off") from None
    finally:
        resp.close()
    return bytes(out)


class BoundedDigestAuth(HTTPDigestAuth):
    """requests' digest authentication, reading at most CHALLENGE_BODY bytes of a challenge's body: requests' own
    handle_401 reads the whole body (`r.content`) before answering the challenge, however long it is."""

    CHALLENGE_BODY = 4096

    def handle_401(self, r: requests.Response, **kwargs) -> requests.Response:
        if 400 <= r.status_code < 500 and r._content is False:
            # within the request's own timeout (read one byte per timeout, 4 kB would take 4,096 of them)
            timeout = kwargs.get("timeout")
            timeout = max(t for t in timeout if t) if isinstance(timeout, tuple) and any(timeout) else timeout
            budget = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 10.0
            body = read_answer(r, self.CHALLENGE_BODY, r.url or "the phone", f"{r.request.method} (its challenge)",
                               time.monotonic() + budget)
            r._content, r._content_consumed = body[:self.CHALLENGE_BODY], True
        return super().handle_401(r, **kwargs)


def discard_answer(resp: requests.Response | urllib3.BaseHTTPResponse, name: str, timeout: float,
                   limit: int = 4096) -> None:
    """An answer whose body nobody needs (a challenge before its retry): read, at most `limit` bytes within one
    `timeout`, so its connection serves the next request; a longer or slower one closes it instead."""
    try:
        read_answer(resp, limit, name, "an answer not used", time.monotonic() + timeout)
    except (DeviceTimeout, MalformedAnswer):
        pass        # closed: the next request opens a connection of its own
