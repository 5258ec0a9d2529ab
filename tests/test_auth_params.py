"""sipwire.auth_params: the one linear reader of Digest parameters (SIP and HTTP), its cap and its users.

The old pattern (`([A-Za-z0-9_-]+)\\s*=\\s*(...)` through finditer) took seconds on "Digest " + "a" * 32000,
reached from the collector's poller (its event loop), the SIP NOTIFY and web UI drivers and the lab's
registrar and phone web server. Linearity is checked by counting the reader's Python steps (no timing).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from hil import http_digest
from sipwire import digest
from sipwire.auth_params import MAX_AUTH_PARAMS_CHARS, parse_auth_params
from sipwire.message import SipParseError
from linear import python_steps

ROOT = Path(__file__).resolve().parent.parent


def test_real_challenges_and_answers_read_as_before():
    got = parse_auth_params('realm="sip.example", nonce="a\\"b", qop="auth,auth-int", algorithm=MD5, stale=FALSE')
    assert got == {"realm": "sip.example", "nonce": 'a"b', "qop": "auth,auth-int", "algorithm": "MD5", "stale": "FALSE"}
    assert parse_auth_params('username="1001",uri=sip:1001@host, nc=00000001') == \
        {"username": "1001", "uri": "sip:1001@host", "nc": "00000001"}
    assert digest.parse_challenge('Digest realm="r", nonce="n"') == {"realm": "r", "nonce": "n"}


@pytest.mark.parametrize("bad", ['realm', 'realm="unterminated', 'realm="r" nonce="n"', '=x', 'a b=c'])
def test_malformed_parameters_are_refused_by_every_user(bad):
    assert parse_auth_params(bad) is None
    assert http_digest.parse_params(bad) is None
    with pytest.raises(SipParseError):
        digest.parse_challenge("Digest " + bad)


@pytest.mark.parametrize("attack", ["a" * 16000, "a=" * 8000, '"' * 16000, "a, " * 5000, "a=\"\\" * 4000])
def test_the_old_stalling_inputs_cost_steps_linear_in_their_length_and_nothing_over_the_cap(attack):
    # under the cap the reader's steps grow linearly: twice the text, at most about twice the steps
    half, whole = attack[:MAX_AUTH_PARAMS_CHARS // 2], attack[:MAX_AUTH_PARAMS_CHARS]
    refused = (SipParseError,)
    assert python_steps(parse_auth_params, whole, expected=refused) <= \
        2 * python_steps(parse_auth_params, half, expected=refused) + 50
    # over the cap: refused before reading, a constant number of steps
    assert python_steps(digest.parse_challenge, "Digest " + attack, expected=(SipParseError,)) < 50
    assert parse_auth_params(attack) is None and http_digest.parse_params(attack) is None
    with pytest.raises(SipParseError):       # a valid challenge padded over the cap is refused, not read
        digest.parse_challenge('Digest realm="r", nonce="n", x="' + attack + '"')


def test_no_module_reads_auth_parameters_with_a_pattern_of_its_own():
    """Every Digest reader in fleet, hil and sipwire goes through sipwire.auth_params: no `re` call on a
    pattern naming `=` with a quoted-string alternative (the old shape) anywhere."""
    offenders = []
    for path in [*ROOT.glob("fleet/**/*.py"), *ROOT.glob("hil/**/*.py"), *ROOT.glob("sipwire/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and '=\\s*("' in arg.value:
                    offenders.append(f"{path.relative_to(ROOT)}:{arg.lineno}")
    assert not offenders, offenders
