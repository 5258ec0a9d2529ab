"""Call evidence from the wire: the final answer to a phone's INVITE names the server that took the call."""
from __future__ import annotations

from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.attribution import Attribution, WireTarget
from fleet.evidence.wire.pipeline import WireEvidence
from sipwire import message as sip

MAC = "0004f2000001"
PHONE = ("192.168.1.10", 5060)
PROVIDER, GATEWAY = ("203.0.113.10", 5060), ("192.168.1.1", 5060)


def _ev() -> WireEvidence:
    return WireEvidence(Attribution([WireTarget(MAC, 1, 1, PROVIDER, "1001"), WireTarget(MAC, 1, 2, GATEWAY, "1001")]))


def _invite(server, cseq: int, call_id: str = "call-1@x") -> sip.SipMessage:
    return sip.make_request("INVITE", f"sip:2000@{server[0]}", local=PHONE, from_uri=f"sip:1001@{server[0]}",
                            to_uri=f"sip:2000@{server[0]}", call_id=call_id, cseq=cseq, from_tag="f",
                            contact="<sip:1001@192.168.1.10:5060>")


def _feed(ev: WireEvidence, t: float, src, dst, msg) -> list:
    return ev.feed_datagram(Datagram(t, src, dst, msg.encode() if hasattr(msg, "encode") else msg))


def test_the_answered_invite_names_the_server_and_a_challenge_is_not_the_answer():
    ev = _ev()
    out = []
    first = _invite(PROVIDER, 1)
    out += _feed(ev, 1.0, PHONE, PROVIDER, first)            # the provider never answers (WAN down)
    out += _feed(ev, 1.5, PHONE, PROVIDER, first)            # a retransmission
    second = _invite(GATEWAY, 1, "call-2@x")
    out += _feed(ev, 5.0, PHONE, GATEWAY, second)
    out += _feed(ev, 5.01, GATEWAY, PHONE, sip.make_response(second, 100, "Trying"))
    out += _feed(ev, 5.02, GATEWAY, PHONE, sip.make_response(second, 407, "Proxy Authentication Required"))
    third = _invite(GATEWAY, 2, "call-2@x")
    out += _feed(ev, 5.1, PHONE, GATEWAY, third)
    out += _feed(ev, 5.3, GATEWAY, PHONE, sip.make_response(third, 200, "OK"))
    out += _feed(ev, 5.4, GATEWAY, PHONE, sip.make_response(third, 200, "OK"))   # retransmitted 200: one call
    out += ev.tick(100.0)
    assert [(o.kind, o.server, o.code, o.detail, o.t) for o in out] == [("call", 2, 200, "call to 2000 answered 200", 5.3)]


def test_junk_and_stray_answers_make_no_call():
    ev = _ev()
    stray = sip.make_response(_invite(GATEWAY, 9), 486, "Busy Here")
    assert _feed(ev, 1.0, GATEWAY, PHONE, stray) == []
    assert _feed(ev, 1.0, PHONE, GATEWAY, b"INVITE sip:x SIP/2.0\r\nVia: nonsense\r\n\r\n") == []
    assert _feed(ev, 1.0, PHONE, ("10.9.9.9", 5060), _invite(("10.9.9.9", 5060), 1)) == []
    assert ev.stats.get("stray_invite_responses") == 1


def test_an_answer_forged_by_another_host_makes_no_call():
    """Review of issue 17: an INVITE's answer counted by Call-ID, CSeq and branch alone, so a LAN host could say the
    provider took a call it never answered. Only the INVITE's destination answering back to the phone counts."""
    ev = _ev()
    invite = _invite(PROVIDER, 1)
    spoofer = ("192.168.1.66", 5060)
    out = _feed(ev, 1.0, PHONE, PROVIDER, invite)
    out += _feed(ev, 1.1, spoofer, PHONE, sip.make_response(invite, 200, "OK"))
    assert out == [] and ev.stats.get("foreign_invite_responses") == 1, ev.stats
    out += _feed(ev, 1.2, PROVIDER, PHONE, sip.make_response(invite, 486, "Busy Here"))
    assert [(o.server, o.code) for o in out] == [(1, 486)], "the provider's own answer still counts"


def _register(server, cseq: int, expires: int = 60) -> sip.SipMessage:
    return sip.make_request("REGISTER", f"sip:{server[0]}", local=PHONE, from_uri=f"sip:1001@{server[0]}",
                            to_uri=f"sip:1001@{server[0]}", call_id="reg-1@x", cseq=cseq, from_tag="f",
                            contact="<sip:1001@192.168.1.10:5060>", extra=[("Expires", str(expires))])


def test_a_registration_not_refreshed_by_its_expiry_lapses():
    """The phone goes silent (switched off, or its DNS lookup failed so it sent nothing): the binding the
    wire saw granted is reported gone at its expiry; a refresh in time keeps it."""
    ev = WireEvidence(_ev().build.attribution, lapse=True)
    req = _register(PROVIDER, 1)
    out = _feed(ev, 10.0, PHONE, PROVIDER, req) + _feed(ev, 10.1, PROVIDER, PHONE, sip.make_response(req, 200, "OK", extra=[("Expires", "60")]))
    assert [(o.state, o.expires) for o in out] == [("registered", 60)]
    assert ev.tick(60.0) == []
    again = _register(PROVIDER, 2)
    _feed(ev, 60.0, PHONE, PROVIDER, again)
    _feed(ev, 60.1, PROVIDER, PHONE, sip.make_response(again, 200, "OK", extra=[("Expires", "60")]))
    assert ev.tick(100.0) == [], "refreshed at 60: good until 120"
    lapsed = ev.tick(121.5)
    assert [(o.server, o.state, o.t, o.source) for o in lapsed] == [(1, "unregistered", 120.1, "wire")], lapsed
    assert "lapsed" in lapsed[0].detail and ev.tick(500.0) == []
    assert WireEvidence(_ev().build.attribution).lapse is False, "replays of a file do not invent lapses"


def test_register_to_an_address_no_target_has_makes_the_targets_rebuild_soon(monkeypatch):
    """A rollout moved server 2: the capture sees REGISTERs to the new address, rebuilds its targets from the
    configuration the phones now run, and attributes the next ones."""
    from fleet.evidence.sources.targets import Follower, Targets
    from fleet.evidence.sources import targets as wire_targets
    from fleet.config.inventory import Inventory

    monkeypatch.setattr(wire_targets, "RETARGET_SOON_S", 0.0)
    params = {"reg.1.address": "1001", "reg.1.server.1.address": PROVIDER[0], "reg.1.server.2.address": GATEWAY[0]}
    site = Inventory.model_validate({"name": "x", "sites": [{"name": "a", "gateway": GATEWAY[0],
                                                             "boot_server": {"url": "file:///x"},
                                                             "phones": [{"mac": MAC, "model": "VVX 410",
                                                                         "address": PHONE[0], "credentials": "c"}]}]}).sites[0]
    running = {MAC: dict(params)}
    targets = Targets(site, lambda: {m: dict(p) for m, p in running.items()})
    targets.refresh(force=True)
    ev = WireEvidence(Attribution(targets.wire))
    follow = Follower(ev, targets)
    moved = ("192.168.1.254", 5060)
    running[MAC]["reg.1.server.2.address"] = moved[0]           # what the rollout pushed
    first = _register(moved, 1)
    assert _feed(ev, 1.0, PHONE, moved, first) + _feed(ev, 1.1, moved, PHONE, sip.make_response(first, 200, "OK")) == []
    follow.tick()
    again = _register(moved, 2)
    out = _feed(ev, 2.0, PHONE, moved, again) + _feed(ev, 2.1, moved, PHONE, sip.make_response(again, 200, "OK"))
    assert [(o.server, o.state, o.address) for o in out] == [(2, "registered", "192.168.1.254:5060")]
