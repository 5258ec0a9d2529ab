"""HTTP GET/PUT/DELETE to the boot server (urllib3): no credentials unasked, a password never in clear.

Every request goes out without credentials: a read (the `--probe` too) needs
none on a server that serves phones anonymously. When the server answers 401,
the publisher answers its challenge: Digest on any connection (the password
never crosses the wire), Basic only over HTTPS. A server that offers only
Basic over plain HTTP is refused with a message saying so, rather than handed
the password in clear on a LAN anyone can capture.

Writes (PUT, DELETE) share one Digest state per publisher: once the server has
challenged one, the next carries the answer for the server's nonce unasked
(with the next nonce count, RFC 7616 3.4), so a phone's three writes cost one
challenge, not three (a 1,000-phone rollout made 2,000 round trips less). A
stale or refused nonce draws a fresh challenge, answered as the first. A
server that refuses an unasked answer outright (400 or 403, not a fresh 401:
RFC 7616 leaves a server free to) gets the write once more from a fresh
state, as the first write went. Reads stay anonymous: a fresh state each,
answering only a challenge.

Names are checked before any request (names.check_name) and sent as one
percent-encoded path segment, so no name can address anything but a file in
the boot directory; the server itself writes atomically.
"""
from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

import urllib3

from fleet.config.inventory import Credentials
from fleet.drivers.digest_state import DigestState, send_answering
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, MalformedAnswer
from fleet.drivers.http_body import discard_answer, read_answer
from fleet.drivers.lan_http import USER_AGENT, lan_pool
from fleet.drivers.publish.names import check_name, shown
from fleet.drivers.publish.size import MAX_FILE_BYTES, too_long

WHY_BYTES = 4096          # of a refusal's body read for its one-line reason
CHALLENGE_BODY = 4096     # of a challenge's body read before the request is sent again (on the same connection)

Answer = urllib3.BaseHTTPResponse


class HttpPublisher:
    def __init__(self, url: str, credentials: Credentials, timeout: float) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}{parts.path.rstrip('/')}/"
        self.prefix = parts.path.rstrip("/") + "/"
        self.name = f"boot server {self.base}"
        self.https = parts.scheme == "https"
        # urllib3 itself (fleet.drivers.lan_http.lan_pool): one keep-alive connection, no proxy or ~/.netrc from the
        # environment, no redirect followed or read; https checked against the CA bundle the environment names
        self.pool = lan_pool(self.base, timeout)
        self.credentials = credentials
        self.timeout = timeout
        # the writes' Digest state: the server's nonce, answered unasked once known
        self._write_digest = DigestState(credentials.username, credentials.password) if credentials.username \
            else None
        self._answers_unasked = False    # the last write went through on the held nonce (see _unasked_answer_refused)
        self.retry_first_on_closed = False   # set by fleet.drivers.publish.kept when it lends one kept from a push

    def _send(self, method: str, path: str, data: bytes | None, authorization: str | None = None) -> Answer:
        headers = {"User-Agent": USER_AGENT}
        if authorization:
            headers["Authorization"] = authorization
        retry, self.retry_first_on_closed = self.retry_first_on_closed, False

        def send() -> Answer:
            return self.pool.urlopen(method, path, body=data, headers=headers, retries=False, redirect=False,
                                     preload_content=False, release_conn=False)
        try:
            return send()
        except urllib3.exceptions.ProtocolError:
            # the kept connection was closed by the server (its keep-alive ran out) as this request went, before any
            # answer: once more on a fresh one. GET, PUT (the same bytes) and DELETE are idempotent. Not after a
            # timeout, nor for a publisher's own connection, which was fresh.
            if not retry:
                raise
            return send()

    def _discard(self, resp: Answer) -> None:
        """An answer's body nobody needs (a challenge's, a write's), read (at most CHALLENGE_BODY, within one
        timeout) so its connection serves the next request; a longer or slower one closes it instead."""
        discard_answer(resp, self.name, self.timeout, CHALLENGE_BODY)

    def _exchange(self, method: str, path: str, url: str, data: bytes | None,
                  digest: DigestState | None) -> tuple[Answer, bool]:
        """One request: with an answer to `digest`'s challenge unasked when it holds one, and sent once more
        answering the server's Digest challenge when it sends one (a stale nonce too). The answer, and whether a
        challenge was answered."""
        unasked = digest.answer(method, url) if digest is not None and digest.holds_nonce else None
        return send_answering(lambda auth: self._send(method, path, data, auth), digest, method, url, unasked,
                              self._discard)

    def _call(self, method: str, filename: str, data: bytes | None = None) -> Answer:
        name = check_name(self.name, filename)
        path = self.prefix + quote(name, safe="")
        url = self.base + quote(name, safe="")
        creds = self.credentials
        try:
            # a read: a fresh digest state (nothing sent until challenged, only a Digest challenge answered); a
            # write: the publisher's, which answers the server's last nonce unasked once it has one
            if method == "GET":
                digest = DigestState(creds.username, creds.password) if creds.username else None
            else:
                digest = self._write_digest
            resp, answered = self._exchange(method, path, url, data, digest)
            if method != "GET" and digest is not None:
                resp = self._unasked_answer_refused(resp, method, path, url, data, answered)
            if resp.status != 401 or not creds.username or "digest" in (offers := _offered_schemes(resp)):
                return resp
            if "basic" in offers and self.https:
                self._discard(resp)
                try:
                    basic = urllib3.util.make_headers(basic_auth=f"{creds.username}:{creds.password}")["authorization"]
                except UnicodeEncodeError:      # its message would show a character of the password
                    raise DeviceRefused(self.name, f"{method} {shown(name)}: the server asks for Basic, which cannot "
                                                   "carry this login (a character outside Latin-1)") from None
                return self._send(method, path, data, basic)
            if "basic" in offers:
                resp.close()
                raise DeviceRefused(self.name, f"{method} {shown(name)}: the server asks for Basic authentication over "
                                               "plain HTTP; fleet never sends the password in clear (offer Digest on "
                                               "the server, or use https://)")
            return resp
        except urllib3.exceptions.NewConnectionError as exc:    # refused, no route, a name that does not resolve
            raise DeviceTimeout(self.name, f"{method} {shown(name)}: cannot connect ({type(exc).__name__})") from None
        except urllib3.exceptions.TimeoutError:
            raise DeviceTimeout(self.name, f"{method} {shown(name)}: no answer within {self.timeout:g}s") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise DeviceTimeout(self.name, f"{method} {shown(name)}: {type(exc).__name__}") from None

    def _unasked_answer_refused(self, resp: Answer, method: str, path: str, url: str, data: bytes | None,
                                answered: bool) -> Answer:
        """A write's answer, once more from a fresh Digest state when the server refused one sent unasked with 400
        or 403 (where most servers challenge afresh with 401): the same bytes again, so idempotent. A server that
        refuses the write itself refuses the second try the same way, and that answer is the one reported."""
        if self._answers_unasked and resp.status in (400, 403):
            creds = self.credentials
            self._write_digest = DigestState(creds.username, creds.password)
            resp.close()
            resp, answered = self._exchange(method, path, url, data, self._write_digest)
        # a challenge answered, or an unasked answer taken: the next write answers the held nonce unasked
        self._answers_unasked = resp.status < 400 and (answered or self._answers_unasked)
        return resp

    def read(self, filename: str) -> bytes | None:
        """The file's bytes (None when absent): at most MAX_FILE_BYTES, read within the request's budget (three
        timeouts: the request, a challenge's answer, the body), however slowly the server sends it."""
        deadline = time.monotonic() + 3 * self.timeout
        resp = self._call("GET", filename)
        if resp.status == 404:
            self._discard(resp)     # read (it is short), so the connection serves the next request
            return None
        if resp.status != 200:
            raise DeviceRefused(self.name, f"GET {shown(filename)}: HTTP {resp.status}{_why(resp, self.timeout)}")
        declared = resp.headers.get("Content-Length", "")
        # ASCII digits only, and short: str.isdigit takes "²", and int() refuses over 4,300 digits
        if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > MAX_FILE_BYTES):
            resp.close()
            raise too_long(self.name, filename)
        body = read_answer(resp, MAX_FILE_BYTES, self.name, f"GET {shown(filename)}", deadline)
        if len(body) > MAX_FILE_BYTES:
            raise too_long(self.name, filename)
        return body

    def write(self, filename: str, data: bytes) -> None:
        resp = self._call("PUT", filename, data)
        if resp.status not in (200, 201, 204):
            raise DeviceRefused(self.name, f"PUT {shown(filename)}: HTTP {resp.status}{_why(resp, self.timeout)}")
        self._discard(resp)

    def delete(self, filename: str) -> None:
        resp = self._call("DELETE", filename)
        if resp.status not in (200, 202, 204, 404):
            raise DeviceRefused(self.name,
                                f"DELETE {shown(filename)}: HTTP {resp.status}{_why(resp, self.timeout)}")
        self._discard(resp)

    def close(self) -> None:
        self.pool.close()


def _offered_schemes(resp: Answer) -> set[str]:
    """The authentication schemes a 401 offers, lower-cased (`WWW-Authenticate` headers, joined by urllib3 with
    commas: a scheme is a piece's first word when that word is not a `name=value` parameter)."""
    text = resp.headers.get("WWW-Authenticate", "")[:4096]
    schemes = set()
    for piece in text.split(","):
        word = piece.strip().split(" ", 1)[0]
        if word and "=" not in word:
            schemes.add(word.lower())
    return schemes


def _why(resp: Answer, timeout: float) -> str:
    """The server's one-line reason for a refusal, when it sent a short plain-text one (at most WHY_BYTES of its
    body are read, within one `timeout`); the response is closed."""
    if not resp.headers.get("Content-Type", "").startswith("text/plain"):
        resp.close()
        return ""
    try:
        raw = read_answer(resp, WHY_BYTES, "the boot server", "a refusal's reason", time.monotonic() + timeout)
    except (DeviceTimeout, MalformedAnswer):
        return ""
    text = raw[:WHY_BYTES].decode("utf-8", "replace").strip()
    text = text.splitlines()[0][:80] if text else ""
    return f" ({text})" if text.isprintable() and text else ""


def open(url: str, credentials: Credentials, timeout: float) -> HttpPublisher:  # noqa: A001
    return HttpPublisher(url, credentials, timeout)
