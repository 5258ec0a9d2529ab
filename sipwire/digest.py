"""HTTP digest authentication as SIP uses it (RFC 2617 / RFC 3261 22.4), MD5 with and without qop=auth."""
from __future__ import annotations

import hashlib
import secrets

from .auth_params import MAX_AUTH_PARAMS_CHARS, parse_auth_params
from .message import SipParseError


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def parse_challenge(value: str) -> dict[str, str]:
    """A Digest challenge's (or Authorization's) parameters, read in linear time (sipwire.auth_params);
    SipParseError for another scheme, malformed or oversize parameters, or no realm or nonce."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported auth scheme: {scheme!r}")
    params = parse_auth_params(rest)
    if params is None:
        raise SipParseError(f"malformed digest parameters (or over {MAX_AUTH_PARAMS_CHARS} characters): {rest[:40]!r}")
    if "nonce" not in params or "realm" not in params:
        raise SipParseError("digest challenge without realm or nonce")
    return params


def response_digest(*, username: str, realm: str, password: str, method: str, uri: str, nonce: str,
                    qop: str | None = None, nc: str = "00000001", cnonce: str = "") -> str:
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if qop:
        return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5(f"{ha1}:{nonce}:{ha2}")


def authorization(challenge: dict[str, str], *, username: str, password: str, method: str, uri: str) -> str:
    """Value for an Authorization/Proxy-Authorization header answering `challenge`."""
    qop = None
    if "qop" in challenge:
        offered = [q.strip() for q in challenge["qop"].split(",")]
        qop = "auth" if "auth" in offered else None
    cnonce = secrets.token_hex(8)
    nc = "00000001"
    digest = response_digest(username=username, realm=challenge["realm"], password=password, method=method,
                             uri=uri, nonce=challenge["nonce"], qop=qop, nc=nc, cnonce=cnonce)
    parts = [f'username="{username}"', f'realm="{challenge["realm"]}"', f'nonce="{challenge["nonce"]}"',
             f'uri="{uri}"', f'response="{digest}"', "algorithm=MD5"]
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    if qop:
        parts += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
    return "Digest " + ", ".join(parts)


def verify(header: str, *, password_for, method: str) -> str | None:
    """Check an Authorization header; return the authenticated username or None.

    `password_for(username, realm)` returns the password or None for an unknown user.
    """
    try:
        params = parse_challenge(header)
    except SipParseError:
        return None
    user = params.get("username", "")
    password = password_for(user, params["realm"])
    if password is None or "response" not in params or "uri" not in params:
        return None
    expected = response_digest(username=user, realm=params["realm"], password=password, method=method,
                               uri=params["uri"], nonce=params["nonce"], qop=params.get("qop"),
                               nc=params.get("nc", ""), cnonce=params.get("cnonce", ""))
    return user if secrets.compare_digest(expected, params["response"]) else None
