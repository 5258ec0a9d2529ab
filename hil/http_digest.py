"""HTTP Digest authentication (RFC 7616, MD5 and SHA-256, qop=auth) for the lab's boot server.

A real provisioning server answers a write with a Digest challenge, so a
client proves it knows the password without sending it: over plain HTTP that
is the only way a password does not cross the LAN in clear. The nonce is
stateless (a time stamp and its HMAC under a per-server key) and expires, so
a captured answer cannot be replayed for long; the header is parsed in one
linear pass and refused over a size cap (it comes from the network).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sipwire.auth_params import MAX_AUTH_PARAMS_CHARS, parse_auth_params

MAX_HEADER_CHARS = MAX_AUTH_PARAMS_CHARS   # an Authorization header longer than this is refused unparsed
NONCE_LIFETIME_S = 300.0
ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def parse_params(text: str) -> dict[str, str] | None:
    """`k=v, k="quoted, \\"v\\""` pairs (keys lower-cased): sipwire.auth_params, the one linear reader with its
    size cap (MAX_HEADER_CHARS); None when malformed or over the cap."""
    return parse_auth_params(text)


class DigestAuthority:
    """Issues Digest challenges for one realm and checks the answers against one user and password."""

    def __init__(self, realm: str, username: str, password: str) -> None:
        self.realm, self.username, self.password = realm, username, password
        self._key = secrets.token_bytes(32)

    def _nonce(self, issued: float) -> str:
        stamp = f"{issued:.3f}"
        mac = hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{stamp}-{mac}"

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        stamp, _, mac = nonce.partition("-")
        try:
            issued = float(stamp)
        except ValueError:
            return False
        good = hmac.compare_digest(self._nonce(issued).encode(), nonce.encode())
        return good and -1.0 <= now - issued <= NONCE_LIFETIME_S     # the stamp is rounded to 1 ms, maybe up

    def challenge(self, algorithm: str = "MD5") -> str:
        """The WWW-Authenticate value for a fresh nonce."""
        return (f'Digest realm="{self.realm}", qop="auth", algorithm={algorithm}, '
                f'nonce="{self._nonce(time.time())}", opaque="{secrets.token_hex(8)}"')

    def verify(self, header: str, method: str, uri: str, now: float | None = None) -> bool:
        """Whether `header` (an Authorization value) is a valid Digest answer for `method` on `uri` (the request
        target as sent) with a fresh nonce: an answer for one file is no answer for another."""
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "digest":
            return False
        p = parse_params(rest)
        if p is None or not all(k in p for k in ("username", "realm", "nonce", "uri", "response")):
            return False
        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS or p["realm"] != self.realm or p["uri"] != uri:
            return False
        if not self._nonce_fresh(p["nonce"], time.time() if now is None else now):
            return False
        h = lambda s: ALGORITHMS[algorithm](s.encode()).hexdigest()   # noqa: E731
        ha1 = h(f"{self.username}:{self.realm}:{self.password}")
        ha2 = h(f"{method}:{p['uri']}")
        if p.get("qop"):
            if p["qop"] != "auth" or "nc" not in p or "cnonce" not in p:
                return False
            expected = h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        else:
            expected = h(f"{ha1}:{p['nonce']}:{ha2}")
        return hmac.compare_digest(p["username"].encode(), self.username.encode()) and \
            hmac.compare_digest(expected.encode(), p["response"].encode())
