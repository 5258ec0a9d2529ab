"""One HTTP Digest conversation (RFC 7616) with a server, for a client that is not requests: its last challenge, and
the answer to it for the next request, with the next nonce count.

The answer itself is computed by requests' HTTPDigestAuth.build_digest_header (MD5, SHA-256, SHA-512, their -sess
forms, qop auth), the code every other request fleet sends to a device already answers challenges with; this keeps
only the state, so the urllib3 clients (the boot-server publisher, the phones' REST) can answer a challenge without
a requests Session around it. `send_answering` is the one exchange both make: a request, and once more answering
the challenge its 401 brings.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from requests.auth import HTTPDigestAuth
from requests.utils import parse_dict_header

_SCHEME = re.compile(r"digest ", flags=re.IGNORECASE)
Answer = TypeVar("Answer")      # the client's response type (urllib3's): it has .status and .headers
CHALLENGE_MAX = 4096     # characters of a WWW-Authenticate header read for its challenge


class DigestState:
    """A server's last Digest challenge and the answers to it. Not shared between threads (a publisher is one
    task's); requests keeps the state per thread, so each use sets it up for the calling thread first."""

    def __init__(self, username: str, password: str) -> None:
        self._auth = HTTPDigestAuth(username, password)

    def _state(self):
        self._auth.init_per_thread_state()
        return self._auth._thread_local

    @property
    def holds_nonce(self) -> bool:
        """Whether a challenge was taken: the next request can carry an answer unasked."""
        return bool(self._state().chal)

    def take(self, www_authenticate: str) -> bool:
        """The server's challenge from its WWW-Authenticate header; False when it offers no Digest, or one without
        the nonce and realm an answer needs (the state is left as it was). As requests does: the text after the
        first "Digest " is the challenge's parameters."""
        header = www_authenticate[:CHALLENGE_MAX]
        if "digest" not in header.lower():
            return False
        chal = parse_dict_header(_SCHEME.sub("", header, count=1))
        if not isinstance(chal.get("nonce"), str) or not isinstance(chal.get("realm"), str):
            return False        # nothing an answer could be computed from (`Digest realm, nonce` gives None values)
        self._state().chal = chal
        return True

    def answer(self, method: str, url: str) -> str | None:
        """The Authorization header for `method` on `url` (its path is what the digest covers), or None when the
        challenge asks for what requests cannot answer (an unknown algorithm, a qop other than auth)."""
        if not self._state().chal:
            return None
        try:
            return self._auth.build_digest_header(method, url)
        except (AttributeError, TypeError, ValueError):
            return None     # a parameter of a shape the answer cannot use


def send_answering(send: Callable[[str | None], Answer], digest: DigestState | None, method: str, url: str,
                   authorization: str | None, discard: Callable[[Answer], None]) -> tuple[Answer, bool]:
    """`send(authorization)`; when its answer is a 401 with a Digest challenge `digest` takes and can answer, that
    answer's body goes to `discard` (read, so the connection serves the retry) and the request is sent once more
    with the answer, as requests' digest handling did (a stale nonce too). The last answer, and whether a challenge
    was answered."""
    resp = send(authorization)
    if resp.status == 401 and digest is not None and digest.take(resp.headers.get("WWW-Authenticate", "")):
        answer = digest.answer(method, url)
        if answer is not None:
            discard(resp)
            return send(answer), True
    return resp, False
