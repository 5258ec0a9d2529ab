"""Unit: fleet's gateway parsers against every gateway answer of the conformance corpus (area `gateway`).

Each entry is read the way fleet reads it: a whole answer of its platform through the platform's parser, a part of
the per-AoR Kamailio answer (the brief dump, one lookup) through the piece that reads it. For every entry: no
binding that the answer does not hold, no user of a hostile value's text, and the answer's own users read."""
from __future__ import annotations

import pytest

from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.wire.attribution import WireTarget
from fleet.state.observe import REGISTERED
from soundpoint import conformance

# registrar bindings only: the HEP datagram entries (gateway-hep-*) are read in tests/test_wire_hostile.py, the
# answers to a call the gateway places (gateway-kamailio-uac-*, gateway-freeswitch-originate-*) in
# tests/test_inbound_calls.py
OTHER_READERS = ("gateway-hep-", "gateway-kamailio-uac-", "gateway-freeswitch-originate-")
ENTRIES = [e for e in conformance.select(area="gateway") if not e.id.startswith(OTHER_READERS)]
T0 = 1795715000.0

# what each entry must read as: {user: active} of its bindings, or the GatewayOutputError text it must raise
EXPECTED: dict[str, dict[str, bool] | str] = {
    "gateway-kamailio-ul-dump": {"1001": True, "1002": True},
    "gateway-kamailio-ul-dump-folded-user-agent": "AoRs where Kamailio counted",
    "gateway-kamailio-ul-dump-brief": "brief",
    "gateway-kamailio-command-per-aor": {"1001": True, "1002": True},
    "gateway-kamailio-command-per-aor-folded-user-agent": {"1001": True, "1002": True, "1003": True},
    "gateway-kamailio-command-jsonrpc": {"1001": True, "1002": True},
    "gateway-kamailio-command-jsonrpc-folded-user-agent": {"1001": True, "1002": True, "1003": True},
    "gateway-asterisk-pjsip-show-contacts": {"1001": True, "1002": True, "1004": True},
    "gateway-asterisk-contacts-with-registrar": {"1001": True, "1002": True, "1004": False},
    "gateway-freeswitch-show-registrations": {"1001": True, "1002": True, "1004": False},
}
PIECES = {"gateway-kamailio-ul-lookup": ("1001", {"1001": True}), "gateway-kamailio-ul-lookup-not-found": ("1009", {})}


def test_every_gateway_entry_has_an_expectation():
    assert {e.id for e in ENTRIES} == set(EXPECTED) | set(PIECES)


def _platform(entry_id: str) -> gb.GatewayPlatform:
    return gb.platform(entry_id.split("-")[1])


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.id in EXPECTED], ids=lambda e: e.id)
def test_gateway_answers_read_as_the_entry_says(entry):
    want = EXPECTED[entry.id]
    if isinstance(want, str):
        with pytest.raises(gb.GatewayOutputError, match=want):
            _platform(entry.id).parse(entry.body, T0)
        return
    bindings = _platform(entry.id).parse(entry.body, T0)
    assert {b.user: b.active for b in bindings} == want, bindings
    assert all(b.contact.lower().startswith(("sip:", "sips:")) and "10.9.9.9" not in b.contact for b in bindings)
    assert not getattr(bindings, "unreadable", set()), bindings.unreadable


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.id in PIECES], ids=lambda e: e.id)
def test_kamailio_lookup_answers_read_as_their_own_aor(entry):
    aor, want = PIECES[entry.id]
    found = gb._lookup_section(aor, entry.body.split("\n"))
    assert found is not None and {b.user: b.active for b in found} == want, found


def test_a_folded_user_agent_in_a_per_aor_answer_stays_in_its_own_aor():
    """The hostile entry's 1002 section is 1002's own; the injected 10.9.9.9 contact is nowhere."""
    body = conformance.get("gateway-kamailio-command-per-aor-folded-user-agent").body
    assert "sip:1002@10.9.9.9:5060" in body                    # the hostile text is there ...
    bindings = gb.parse_kamailio(body, T0)
    assert [b.contact for b in bindings if b.user == "1002"] and all(
        "10.9.9.9" not in b.contact for b in bindings)            # ... and reads as nobody's binding


def test_a_per_aor_section_that_cannot_be_read_is_that_users_loss_only():
    body = conformance.get("gateway-kamailio-command-per-aor").body
    broken = body.replace("\t\t\tExpires: ", "\t\t\tExpires: soon", 1)      # the first looked-up AoR's only contact
    bindings = gb.parse_kamailio(broken, T0)
    first = body.split("@aor location ", 2)[1].split("\n", 1)[0]
    assert bindings.unreadable == {first} and {b.user for b in bindings} == {"1001", "1002"} - {first}
    targets = [WireTarget(mac=f"0004f2{int(u):06d}", reg=1, server=1, address=("127.0.0.1", 5060), user=u)
               for u in ("1001", "1002")]
    observed = {o.mac[-4:]: o.state for o in gb.observations(bindings, targets, T0)}
    assert observed == {u: REGISTERED for u in ("1001", "1002") if u != first}, observed   # neither bound nor unbound


RECEIVED_FOLD = "X\r\n\t\t\tReceived: sip:10.0.0.6:5060"      # a folded User-Agent saying where the REGISTER came from


def _shared_line_targets() -> list[WireTarget]:
    """Phones X (127.0.0.1, where the REGISTER really came from) and Y (10.0.0.6) on one shared AoR 1001."""
    return [WireTarget(mac=mac, reg=1, server=1, address=("127.0.0.1", 5060), user="1001", phone_ip=ip)
            for mac, ip in (("0004f200000a", "127.0.0.1"), ("0004f200000b", "10.0.0.6"))]


@pytest.mark.parametrize("entry_id, indent", [("gateway-kamailio-command-per-aor", "\t\t\t"),
                                              ("gateway-kamailio-ul-dump", "\t" * 7)])
def test_a_folded_user_agent_cannot_say_where_a_binding_came_from(entry_id, indent):
    """Review of issue 17: the first occurrence of a key was kept and usrloc prints Received after User-Agent, so the
    fold made 1001's binding look as if 10.0.0.6 (phone Y) had registered it: Y registered, X unregistered. Now a
    contact showing a key twice makes its AoR unreadable: no observation for either phone."""
    body = conformance.get(entry_id).body
    ua = next(line for line in body.split("\n") if "User-Agent: PolycomVVX" in line)
    assert ua.startswith(indent + "User-Agent: "), ua
    hostile = body.replace(ua, indent + "User-Agent: " + RECEIVED_FOLD.replace("\t\t\t", indent))
    bindings = gb.parse_kamailio(hostile, T0)
    assert "1001" in bindings.unreadable and not [b for b in bindings if b.user == "1001"], bindings
    assert gb.observations(bindings, _shared_line_targets(), T0) == []
    assert [b.user for b in bindings] == ["1002"], "the other AoR is still read"


def test_on_a_shared_aor_a_contact_naming_another_phone_is_not_that_phones_binding():
    """Review of issue 17: without a recorded sender (Kamailio's `Received: [not set]`) the Contact host stood for
    the sender, and any phone of a shared AoR may write any Contact: X's binding naming Y's address made Y registered
    and X unregistered. Now neither phone gets an observation; a recorded sender still tells them apart."""
    x, y = _shared_line_targets()
    planted = gb.Binding("1001", "sip:1001@10.0.0.6:5060", 300)                  # X wrote Y's address
    assert gb.observations(gb.Bindings([planted]), [x, y], T0) == []
    recorded = gb.Binding("1001", "sip:1001@10.0.0.6:5060", 300, source_ip="127.0.0.1")
    assert {o.mac: o.state for o in gb.observations(gb.Bindings([recorded]), [x, y], T0)} == {x.mac: REGISTERED}
    # the same sender read from kamcmd's text, which a folded value can still forge as a whole contact: no observation
    assert gb.observations(gb.Bindings([recorded], senders_recorded=False), [x, y], T0) == []
    # one phone on the AoR: its Contact stands for the sender (only that line's credentials could write it)
    assert {o.mac: o.state for o in gb.observations(gb.Bindings([planted]), [y], T0)} == {y.mac: REGISTERED}


def test_a_folded_user_agent_split_into_two_whole_contacts_cannot_speak_for_another_phone():
    """The fold may also close its contact and open another, each key once (ul_rpc.c's order): X's own binding then
    shows Y's address as Received (folded with bare LFs, which Kamailio keeps too). Per-AoR text is not a recorded
    sender: no observation on the shared AoR."""
    body = conformance.get("gateway-kamailio-command-per-aor").body
    ua = next(line for line in body.split("\n") if "User-Agent: PolycomVVX" in line)
    section = body.split("@aor location 1001\n", 1)[1]
    tail = section.split(ua + "\n", 1)[1].split("\n\t\t}\n", 1)[0].split("\n")          # Received .. Last-Modified
    head = section.split("\t\tContact: {\n", 1)[1].split(ua, 1)[0].rstrip("\n").split("\n")   # Address .. CSeq
    forged_tail = ["\t\t\tReceived: sip:10.0.0.6:5060" if line.startswith("\t\t\tReceived:") else line for line in tail]
    fold = "\n".join(["X", *forged_tail, "\t\t}", "\t\tContact: {",
                        *[line.replace("127.0.0.1:", "127.0.0.1:1") for line in head], "\t\t\tUser-Agent: Y"])
    hostile = body.replace(ua, "\t\t\tUser-Agent: " + fold)
    bindings = gb.parse_kamailio(hostile, T0)
    assert sorted(b.source_ip for b in bindings if b.user == "1001") == ["", "10.0.0.6"], bindings   # the forgery reads
    assert gb.observations(bindings, _shared_line_targets(), T0) == []                           # ... and says nothing


def test_a_long_answer_is_attributed_in_pieces_with_the_same_outcome():
    """A 5,000-phone site's answer is attributed with a pause (the poller's GIL courtesy) every `pause_every`
    targets, and what it finds is exactly what it finds without pausing."""
    rows = [gb.Binding(aor=f"{1000 + i}@example.net", contact=f"sip:{1000 + i}@10.1.{i // 250}.{i % 250 + 1}:5060",
                       expires_in=300, status="", source_ip=f"10.1.{i // 250}.{i % 250 + 1}", user_agent="")
            for i in range(0, 1000, 2)]          # every other phone bound
    targets = [WireTarget(mac=f"0004f2{i:06d}", reg=1, server=2, address=("192.0.2.1", 5060), user=f"{1000 + i}",
                          phone_ip=f"10.1.{i // 250}.{i % 250 + 1}") for i in range(1000)]
    pauses: list[int] = []
    paced = gb.observations(rows, targets, 1.0, pause=lambda: pauses.append(1), pause_every=200)
    assert len(pauses) == 5
    assert paced == gb.observations(rows, targets, 1.0)
    assert [o.state for o in paced[:4]] == [REGISTERED, "unregistered", REGISTERED, "unregistered"]
