"""Issue 17, point 2: wire evidence counts for a phone only when the phone (or an address the inventory allows for
it) sent it; a challenge never changes a registration's state; a gateway binding is a phone's only when it was
registered from the phone's address. Everything else is "foreign", counted per source address and shown by
`fleet status` (table and --json) and the experiment report.

Unit level: the attacks fed as a capture's pcap bytes and as HEP v3 datagrams through the real decoders. The same
attacks with real UDP through the lab's router capture and Kamailio's HEP are in test_wire_attribution_lab.py.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
from rich.console import Console

from conftest import SMALL_INVENTORY
from fleet.config import inventory
from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.wire import hep
from fleet.evidence.wire.attribution import Attribution, WireTarget
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.evidence.sources.targets import site_targets
from fleet.state.observe import REGISTERED, UNREGISTERED
from fleet.evidence.status import foreign_table, view
from fleet.state.store import Keys as K
from fleet.state.store import Store
from soundpoint.yamlfile import FileError
from test_wire_evidence import A_ADDR, PROVIDER, T0, register, response, run

MAC = "0004f2000001"
SPOOFER = ("192.168.10.66", 5060)          # a host on the site's LAN that is not the phone
GATEWAY = ("192.168.10.1", 5060)


def _evidence(**target) -> WireEvidence:
    ev = WireEvidence(Attribution([WireTarget(MAC, 1, 1, PROVIDER, "1001", phone_ip=A_ADDR[0], **target)]))
    ev.outcomes = []
    return ev


def _exchange(src: tuple[str, int], *, code: int = 200, expires: int | None = 0) -> list[tuple]:
    """A REGISTER for the phone's user from `src` and the server's answer (expires=0: "remove the binding")."""
    req = register("1001", src, expires=expires, call_id=f"spoof@{src[0]}")
    return [(T0, src, PROVIDER, req), (T0 + 0.01, PROVIDER, src, response(req, code))]


# ------------------------------------------------------------------------------------ spoofed REGISTER, capture

def test_a_register_for_a_phones_user_from_another_address_is_foreign_not_the_phones():
    """Before issue 17 the user alone attributed it: this unregistered the phone (code 200, expires=0)."""
    ev = _evidence()
    assert run(ev, _exchange(SPOOFER)) == [], "a LAN host must not set the phone's state"
    assert ev.build.attribution.foreign == {SPOOFER[0]: 1}
    assert ev.stats["foreign"] == 1, ev.stats
    obs = run(ev, _exchange(A_ADDR, expires=3600))
    assert [(o.mac, o.state) for o in obs] == [(MAC, REGISTERED)], "the phone's own REGISTER still counts"


def test_the_same_spoof_as_hep_is_foreign_too():
    ev = _evidence()
    out = []
    for t, src, dst, payload in _exchange(SPOOFER):
        out += ev.feed_hep(hep.encode(src, dst, t, payload))
    assert out == [] and ev.build.attribution.foreign == {SPOOFER[0]: 1}, ev.stats


def test_an_address_the_inventory_allows_speaks_for_the_phone():
    """Several phones behind one NAT: `allow_from` names the NAT's address (or a network)."""
    nat = ("198.51.100.7", 40001)
    ev = _evidence(allowed=("198.51.100.0/29",))
    obs = run(ev, _exchange(nat))
    assert [(o.mac, o.state, o.code) for o in obs] == [(MAC, UNREGISTERED, 200)]
    assert not ev.build.attribution.foreign
    assert run(ev, _exchange(("198.51.100.9", 5060))) == [], "outside the allowed network"
    assert ev.build.attribution.foreign == {"198.51.100.9": 1}


def test_the_foreign_count_survives_a_rebuild_of_the_targets():
    from fleet.evidence.sources.targets import Follower

    class Targets:
        generation, wire, by_mac = 1, [WireTarget(MAC, 1, 1, PROVIDER, "1001", phone_ip=A_ADDR[0])], {}

    ev = _evidence()
    run(ev, _exchange(SPOOFER))
    follow = Follower(ev, Targets())
    follow.generation = 0
    follow.apply()
    assert ev.build.attribution.targets == Targets.wire and ev.build.attribution.foreign == {SPOOFER[0]: 1}


def test_foreign_addresses_are_counted_in_bounded_memory():
    ev = _evidence()
    for i in range(300):
        src = (f"10.9.{i // 250}.{i % 250}", 5060)
        req = register("1001", src, call_id=f"c{i}")
        run(ev, [(T0 + i, src, PROVIDER, req), (T0 + i, PROVIDER, src, response(req, 200))])
    foreign = ev.build.attribution.foreign
    assert len(foreign) == 257 and foreign["other"] == 300 - 256 and sum(foreign.values()) == 300


# ------------------------------------------------------------------------------------ challenges

def test_a_401_only_exchange_from_the_phones_own_address_changes_nothing():
    """A forged source address passes the address check; the challenge alone still says nothing (before issue 17:
    `down(401)` at once for a request with credentials, or after 32 s for one without)."""
    ev = _evidence()
    bare = register("1001", A_ADDR, call_id="c-bare")
    creds = register("1001", A_ADDR, call_id="c-creds", cseq=2, auth=True)
    obs = run(ev, [(T0, A_ADDR, PROVIDER, bare), (T0, PROVIDER, A_ADDR, response(bare, 401, challenge="Digest realm=x")),
                   (T0, A_ADDR, PROVIDER, creds), (T0, PROVIDER, A_ADDR, response(creds, 407, challenge="Digest realm=x"))])
    obs += ev.tick(T0 + 60)
    assert obs == [], obs
    assert ev.stats["unanswered_challenges"] == 2, ev.stats


# ------------------------------------------------------------------------------------ inventory allowance

def _site(tmp_path, phone_extra: str = "", collector: str = ""):
    text = SMALL_INVENTORY.replace("credentials: admin}", "credentials: admin" + phone_extra + "}")
    if collector:
        text = text.replace("    phones:\n", f"    collector: {collector}\n    phones:\n")
    path = tmp_path / "inv.yml"
    path.write_text(text)
    (tmp_path / "secrets.yml").write_text("{}\n")
    return inventory.load(path).sites[0]


def test_targets_carry_the_phone_and_site_allowances(tmp_path):
    site = _site(tmp_path, ", allow_from: [198.51.100.7]", "{allow_from: [10.20.0.0/24]}")
    params = {MAC: {"reg.1.address": "1001", "reg.1.server.1.address": "203.0.113.10"}}
    targets = site_targets(site, params, lambda name: [])
    assert [(t.phone_ip, t.allowed) for t in targets] == [("127.0.0.2", ("198.51.100.7", "10.20.0.0/24"))]


def test_a_phone_name_resolving_to_several_addresses_admits_each(tmp_path):
    site = _site(tmp_path)
    site = site.model_copy(update={"phones": [site.phones[0].model_copy(update={"address": "phone1.lan"})]})
    params = {MAC: {"reg.1.address": "1001", "reg.1.server.1.address": "203.0.113.10"}}
    targets = site_targets(site, params, lambda name: ["10.1.0.5", "10.1.0.6"] if name == "phone1.lan" else [])
    ev = WireEvidence(Attribution(targets))
    assert [o.mac for o in run(ev, _exchange(("10.1.0.6", 5060)))] == [MAC]
    assert run(ev, _exchange(("10.1.0.7", 5060))) == [] and ev.build.attribution.foreign == {"10.1.0.7": 1}


def test_a_bad_allowance_is_refused_naming_file_line_and_field(tmp_path):
    with pytest.raises(FileError) as exc:
        _site(tmp_path, ", allow_from: [198.51.100.300]")
    text = str(exc.value)
    assert "sites[0].phones[0].allow_from" in text and "'198.51.100.300' is not an address or network" in text, text
    assert text.startswith(f"{tmp_path / 'inv.yml'}:10"), text


# ------------------------------------------------------------------------------------ gateway bindings

def test_a_users_only_binding_from_another_address_is_not_the_phones():
    """Before issue 17 the address was compared only among two or more bindings: a single foreign one was the phone's."""
    target = WireTarget(MAC, 1, 2, GATEWAY, "1001", phone_ip=A_ADDR[0])
    foreign_binding = gb.Binding("1001", f"sip:1001@{SPOOFER[0]}:5060", 3600, source_ip=SPOOFER[0])
    counted: Counter[str] = Counter()
    obs = gb.observations([foreign_binding], [target], T0, foreign=counted)
    assert obs == [] and counted == {SPOOFER[0]: 1}, obs
    # a Contact naming the phone's address does not help when the registrar saw the REGISTER come from elsewhere
    planted = gb.Binding("1001", f"sip:1001@{A_ADDR[0]}:5060", 3600, source_ip=SPOOFER[0])
    assert gb.observations([planted], [target], T0) == []
    own = gb.Binding("1001", f"sip:1001@{A_ADDR[0]}:5060", 3600)
    assert [(o.state, o.expires) for o in gb.observations([own, foreign_binding], [target], T0)] == [(REGISTERED, 3600)]
    assert [(o.state, o.detail) for o in gb.observations([], [target], T0)] == [(UNREGISTERED, "no binding")]


def test_a_phone_whose_only_binding_is_from_its_new_address_is_not_reported_down_at_every_poll():
    """Review of issue 17: a phone that DHCP moved holds its binding from the new address; before the fix every poll
    said "unregistered: no binding". Now no observation (counted foreign) ..."""
    target = WireTarget(MAC, 1, 2, GATEWAY, "1001", phone_ip=A_ADDR[0])
    moved = gb.Binding("1001", f"sip:1001@{MOVED[0]}:5060", 3600, source_ip=MOVED[0])
    counted: Counter[str] = Counter()
    assert gb.observations([moved], [target], T0, foreign=counted) == [] and counted == {MOVED[0]: 1}


# ------------------------------------------------------------------------------------ fleet status and the report

def test_fleet_status_shows_foreign_counts_per_site_and_source(redis_url):
    store = Store(redis_url)
    store.r.flushdb()
    store.set_site_evidence("hq", [], [{"source": "router capture", "running": True, "error": "", "since": None,
                                        "foreign": {"192.168.10.66": 3}},
                                       {"source": "hep", "running": True, "error": "", "since": None, "foreign": {}}])
    store.r.sadd(K.PHONES, MAC)
    store.r.sadd(K.site_phones("hq"), MAC)
    store.r.hset(K.phone(MAC), mapping={"site": "hq", "row": json.dumps({"mac": MAC, "site": "hq"})})
    rows = json.loads(store.status_json())
    assert rows[0]["evidence_foreign"] == [{"source": "router capture", "foreign": {"192.168.10.66": 3}, "total": 3}], rows
    evidence = store.site_evidence(["hq"])
    console = Console(width=200, record=True)
    console.print(foreign_table(evidence))
    text = console.export_text()
    assert "router capture" in text and "192.168.10.66: 3" in text and "hep" not in text.split("router capture")[1], text
    console.print(view([], evidence))


# ------------------------------------------------------------------------------------ a phone that moved (DHCP)

MOVED = ("10.1.0.99", 5060)


def _authenticated(src: tuple[str, int], t: float, *, user: str = "1001", call_id: str = "moved", expires: int = 120,
                   challenged: bool = True, cseq: int = 1) -> list[tuple]:
    """A REGISTER from `src`, challenged (or not), answered with credentials naming `user`, accepted with a 200."""
    out = []
    if challenged:
        bare = register("1001", src, call_id=call_id, cseq=cseq)
        out += [(t, src, PROVIDER, bare), (t, PROVIDER, src, response(bare, 401, challenge='Digest realm="x", nonce="n"'))]
        cseq += 1
    creds = register("1001", src, call_id=call_id, cseq=cseq, auth=True)
    creds = creds.replace(b'username="1001"', f'username="{user}"'.encode())
    ok = response(creds, 200, contacts=[f"<sip:1001@{src[0]}:{src[1]}>;expires={expires}"])
    return out + [(t + 0.01, src, PROVIDER, creds), (t + 0.02, PROVIDER, src, ok)]


def test_a_phone_that_moved_is_learned_from_a_registration_the_server_authenticated():
    ev = _evidence()
    obs = run(ev, _authenticated(MOVED, T0))
    assert [(o.mac, o.state, o.expires) for o in obs] == [(MAC, REGISTERED, 120)], ev.stats
    assert ev.build.attribution.learned == {(MAC, MOVED[0]): pytest.approx(T0 + 0.02 + 120 + 32)}
    # its refreshes reuse the nonce (no new challenge): accepted from the learned address, which they keep
    obs = run(ev, _authenticated(MOVED, T0 + 100, challenged=False, cseq=5))
    assert [(o.mac, o.state) for o in obs] == [(MAC, REGISTERED)]
    assert ev.build.attribution.learned[(MAC, MOVED[0])] == pytest.approx(T0 + 100.02 + 120 + 32)
    assert ev.build.attribution.foreign == {MOVED[0]: 1}, "only its first challenge, before it proved itself"
    # long after that binding's expiry, the address is nobody's again until the server authenticates it anew
    late = run(ev, _authenticated(MOVED, T0 + 1000, challenged=False, cseq=9))
    assert late == [] and ev.build.attribution.foreign == {MOVED[0]: 2}


@pytest.mark.parametrize("how", ["no challenge (open registrar, or a replayed Authorization)",
                                 "another line's credentials", "a challenge and no credentials"])
def test_a_spoofer_is_not_learned_from_a_200_that_proves_nothing(how):
    ev = _evidence()
    if how.startswith("no challenge"):
        packets = _authenticated(SPOOFER, T0, challenged=False)
    elif how == "another line's credentials":
        packets = _authenticated(SPOOFER, T0, user="1003")
    else:
        bare = register("1001", SPOOFER, call_id="x")
        packets = [(T0, SPOOFER, PROVIDER, bare), (T0, PROVIDER, SPOOFER, response(bare, 200))]
    assert run(ev, packets) == [], how
    assert not ev.build.attribution.learned and ev.build.attribution.foreign[SPOOFER[0]] >= 1, ev.stats


# ------------------------------------------------------------------------------------ forged answers (review of issue 17)

def _forged_exchange(spoofer: tuple[str, int], t: float) -> list[tuple]:
    """What a LAN host does alone, every packet from its own address: a REGISTER for the phone's user, a 401 it
    answers itself, a second REGISTER with garbage credentials naming the phone's user, its own 200 (a long expires),
    then its own 403."""
    bare = register("1001", spoofer, call_id="forged")
    creds = register("1001", spoofer, call_id="forged", cseq=2, auth=True)
    ok = response(creds, 200, contacts=[f"<sip:1001@{spoofer[0]}:{spoofer[1]}>;expires=3600"], expires=3600)
    third = register("1001", spoofer, call_id="forged", cseq=3, auth=True)
    return [(t, spoofer, PROVIDER, bare),
            (t + 0.01, spoofer, spoofer, response(bare, 401, challenge='Digest realm="x", nonce="n"')),
            (t + 0.02, spoofer, PROVIDER, creds), (t + 0.03, spoofer, spoofer, ok),
            (t + 1, spoofer, PROVIDER, third), (t + 1.01, spoofer, PROVIDER, response(third, 403, "Forbidden"))]


def test_answers_forged_by_a_lan_host_from_its_own_address_change_nothing():
    """Before the fix the matcher took any response with the request's Call-ID, CSeq and branch: the phone showed
    registered, the spoofer's address was learned for 3632 s, and the forged 403 then marked it unregistered."""
    ev = _evidence()
    obs = run(ev, _forged_exchange(SPOOFER, T0))
    assert obs == [], obs
    assert not ev.build.attribution.learned, ev.build.attribution.learned
    assert ev.stats["foreign_responses"] == 3, ev.stats
    # the forged requests are never answered by the server: a timeout, and that is the spoofer's (foreign), not the phone's
    assert ev.tick(T0 + 60) == [] and ev.build.attribution.foreign[SPOOFER[0]] >= 1, ev.stats


def test_a_forged_200_does_not_beat_the_servers_real_answer():
    """Through a router capture a forged 200 sent ahead of the provider's answer ended the transaction: the provider's
    real 403 was then a duplicate, and the phone read as registered."""
    ev = _evidence()
    req = register("1001", A_ADDR)
    forged = response(req, 200, contacts=[f"<sip:1001@{A_ADDR[0]}:{A_ADDR[1]}>;expires=3600"])
    obs = run(ev, [(T0, A_ADDR, PROVIDER, req), (T0 + 0.01, SPOOFER, A_ADDR, forged),
                   (T0 + 0.05, PROVIDER, A_ADDR, response(req, 403, "Forbidden"))])
    assert [(o.mac, o.state, o.code) for o in obs] == [(MAC, UNREGISTERED, 403)], ev.stats
    assert ev.stats["foreign_responses"] == 1, ev.stats


def test_a_learned_address_is_believed_no_longer_than_the_phones_configured_expiry():
    """The granted expiry is text: before the fix an answer's expires=1000000 kept the address learned for that long."""
    ev = _evidence(expires=600)
    obs = run(ev, _authenticated(MOVED, T0, expires=1_000_000))
    assert [(o.mac, o.state) for o in obs] == [(MAC, REGISTERED)], ev.stats
    assert ev.build.attribution.learned == {(MAC, MOVED[0]): pytest.approx(T0 + 0.02 + 600 + 32)}


def test_targets_carry_the_phones_configured_expiry():
    from fleet.evidence.wire.attribution import targets_for

    servers = [{"index": 1, "address": "203.0.113.10", "expires": 300}, {"index": 2, "address": "192.168.10.1"}]
    assert [t.expires for t in targets_for(MAC, 1, "1001", servers, lambda name: [])] == [300, 3600]


def test_the_gateway_source_takes_a_binding_from_the_address_a_wire_source_learned():
    """Review of issue 17: a phone that DHCP moved proves its new address to the router capture (a registration its
    provider authenticated); the gateway's binding from that address is then its own, not foreign."""
    import time

    from fleet.evidence.sources.gateway_poller import GatewayPoller
    from fleet.evidence.sources.local_capture import LocalCapture
    from fleet.evidence.sources.targets import Targets
    from test_wire_lines import PARAMS, _site

    params = PARAMS | {"voIpProt.server.2.address": GATEWAY[0]}
    targets = Targets(_site(), lambda: {MAC: dict(params)})
    targets.refresh(force=True)
    capture = LocalCapture(targets.site, None, None, targets)     # never started: its pipeline only
    ev = capture._pipeline()
    now = time.time()
    obs = run(ev, _authenticated(MOVED, now))
    assert [(o.reg, o.server, o.state) for o in obs] == [(1, 1, REGISTERED)], ev.stats
    assert targets.learned_addresses(now + 60) == {MAC: (MOVED[0],)}
    poller = GatewayPoller.__new__(GatewayPoller)   # its targets only: no router
    poller.site, poller.targets = targets.site, targets
    binding = gb.Binding("1001", f"sip:1001@{MOVED[0]}:5060", 3600, source_ip=MOVED[0])
    found = [(o.reg, o.server, o.state) for o in gb.observations([binding], poller.gateway_targets(now + 60), now + 60)]
    assert (1, 2, REGISTERED) in found, found
    # long after the binding the learning came from lapsed, the address is nobody's again: no observation for line 1
    late = now + 3600 + 120 + 60
    assert targets.learned_addresses(late) == {}
    assert [o for o in gb.observations([binding], poller.gateway_targets(late), late) if o.reg == 1] == []
