"""fleet.drivers.digest_state: the Digest conversation the urllib3 clients (boot-server publisher, phone REST) keep
with a server: nothing answered before a challenge, answers the server's own check accepts, the nonce count
going up on one nonce and starting again on a new one, and challenges that cannot be answered left alone."""
from __future__ import annotations

import re

from fleet.drivers.digest_state import DigestState
from sipwire import digest

PASSWORD = "s3cret-admin"
CHALLENGE = 'Digest realm="PolycomSPIP", nonce="{nonce}", qop="auth", algorithm=MD5'


def _accepted(header: str, method: str) -> bool:
    return digest.verify(header, method=method,
                         password_for=lambda u, r: PASSWORD if (u, r) == ("Polycom", "PolycomSPIP") else None) == "Polycom"


def _nc(header: str) -> str:
    return re.search(r"nc=([0-9a-f]{8})", header).group(1)


def test_no_answer_before_a_challenge_and_answers_that_the_server_accepts_after():
    state = DigestState("Polycom", PASSWORD)
    assert not state.holds_nonce and state.answer("GET", "http://10.0.0.5/api/v1/mgmt/device/info") is None
    assert state.take(CHALLENGE.format(nonce="0001"))
    first = state.answer("GET", "http://10.0.0.5/api/v1/mgmt/device/info")
    second = state.answer("POST", "http://10.0.0.5/api/v1/mgmt/safeRestart")
    assert first and second and first.startswith("Digest ")
    assert 'uri="/api/v1/mgmt/device/info"' in first and 'uri="/api/v1/mgmt/safeRestart"' in second
    assert _accepted(first, "GET") and _accepted(second, "POST")
    assert not _accepted(second, "GET"), "an answer for POST must not pass for GET"
    assert (_nc(first), _nc(second)) == ("00000001", "00000002")
    assert state.take(CHALLENGE.format(nonce="0002"))       # a fresh nonce (stale=true): counted from 1 again
    assert _nc(state.answer("PUT", "http://10.0.0.5/boot/x.cfg")) == "00000001"


def test_a_challenge_without_digest_or_without_its_nonce_is_not_taken():
    state = DigestState("Polycom", PASSWORD)
    assert not state.take('Basic realm="PolycomSPIP"')
    assert not state.take('Digest realm="PolycomSPIP", qop="auth"')          # no nonce: nothing to answer
    assert not state.holds_nonce
    assert state.take(CHALLENGE.format(nonce="0003"))
    assert not state.take('Digest qop="auth", nonce="0004"')                 # no realm: the held one stays
    assert 'nonce="0003"' in state.answer("GET", "http://10.0.0.5/x")


def test_a_challenge_asking_for_what_cannot_be_answered_gives_no_answer():
    state = DigestState("Polycom", PASSWORD)
    assert state.take('Digest realm="r", nonce="n", algorithm=UNKNOWN-HASH')
    assert state.answer("GET", "http://10.0.0.5/x") is None
    assert state.take('Digest realm="r", nonce="n", qop="auth-int"')
    assert state.answer("GET", "http://10.0.0.5/x") is None


def test_a_challenge_with_bare_parameters_is_not_taken():
    """`Digest realm, nonce` parses to parameters without values: nothing an answer could be computed from (it made
    requests' answer raise AttributeError)."""
    state = DigestState("Polycom", PASSWORD)
    assert not state.take("Digest realm, nonce")
    assert state.answer("GET", "http://10.0.0.5/x") is None
