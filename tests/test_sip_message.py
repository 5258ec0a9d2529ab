from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from sipwire import digest
from sipwire import message as sip
from sipwire.endpoint import TransactionTimers

REGISTER = (b"REGISTER sip:voip.example SIP/2.0\r\n"
            b"v: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKabc;rport\r\n"
            b"f: <sip:1001@voip.example>;tag=x1\r\nt: <sip:1001@voip.example>\r\ni: cid@127.0.0.2\r\n"
            b"CSeq: 7 REGISTER\r\nContact: <sip:1001@127.0.0.2:5060>\r\n"
            b"Subject: folded\r\n continuation\r\nl: 0\r\n\r\n")


def test_parses_compact_headers_and_folded_lines():
    msg = sip.parse(REGISTER)
    assert msg.method == "REGISTER" and msg.uri == "sip:voip.example"
    assert msg.call_id == "cid@127.0.0.2" and msg.cseq == (7, "REGISTER")
    assert msg.top_via_branch == "z9hG4bKabc"
    assert msg.get("subject") == "folded continuation"


def test_top_via_branch_is_the_first_of_several_vias_on_one_line():
    folded = REGISTER.replace(b"branch=z9hG4bKabc;rport\r\n",
                              b"branch=z9hG4bKtop;rport, SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower\r\n")
    assert sip.parse(folded).top_via_branch == "z9hG4bKtop"


def test_response_echoes_dialog_headers_and_stamps_received():
    req = sip.parse(REGISTER)
    resp = sip.make_response(req, 200, "OK", to_tag="srv", received=("127.0.0.9", 40000))
    again = sip.parse(resp.encode())
    assert again.status == 200 and again.call_id == req.call_id and again.cseq == (7, "REGISTER")
    via = again.get("via")
    assert "received=127.0.0.9" in via and "rport=40000" in via
    assert again.get("to").endswith(";tag=srv")


def test_body_is_cut_at_content_length():
    data = REGISTER.replace(b"l: 0", b"l: 3") + b"abcdef"
    assert sip.parse(data).body == b"abc"


@pytest.mark.parametrize("bad", [b"", b"HELLO\r\n\r\n", b"SIP/2.0 999 Nope\r\n\r\n",
                                 REGISTER.replace(b"CSeq: 7 REGISTER", b"CSeq: x"),
                                 REGISTER.replace(b"i: cid@127.0.0.2\r\n", b""),
                                 REGISTER.replace(b"l: 0", b"l: 99"), b"\xff\xfe\r\n\r\n"])
def test_malformed_messages_raise_parse_error(bad):
    with pytest.raises(sip.SipParseError):
        sip.parse(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(data):
    try:
        sip.parse(data)
    except sip.SipParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REGISTER.split(b"\r\n")), max_size=14), st.binary(max_size=40))
def test_shuffled_header_lines_never_crash(lines, tail):
    try:
        sip.parse(b"\r\n".join(lines) + b"\r\n\r\n" + tail)
    except sip.SipParseError:
        pass


def test_digest_answer_verifies_and_wrong_password_does_not():
    challenge = digest.parse_challenge('Digest realm="r", nonce="n1", qop="auth", algorithm=MD5')
    header = digest.authorization(challenge, username="1001", password="pw", method="REGISTER", uri="sip:x")
    assert digest.verify(header, password_for=lambda u, r: "pw", method="REGISTER") == "1001"
    assert digest.verify(header, password_for=lambda u, r: "other", method="REGISTER") is None
    assert digest.verify(header, password_for=lambda u, r: "pw", method="INVITE") is None


def test_rfc2617_vector():
    # RFC 2617 section 3.5 example (HTTP, qop=auth)
    assert digest.response_digest(username="Mufasa", realm="testrealm@host.com", password="Circle Of Life",
                                  method="GET", uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                                  qop="auth", nc="00000001", cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"


def test_polycom_retry_timers_replace_rfc3261_timers():
    assert TransactionTimers().timeout == 32.0
    t = TransactionTimers(retry_timeout=0.5, retry_max_count=3)
    assert t.timeout == 2.0 and t.schedule(False) == [0.5, 0.5, 0.5]
    rfc = TransactionTimers().schedule(False)
    assert rfc[:4] == [0.5, 1.0, 2.0, 4.0] and max(rfc) == 4.0 and sum(rfc) < 32
