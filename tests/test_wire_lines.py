"""A phone's lines (registrations) kept apart: line 2 never changes what is known of line 1, every line has
wire targets, a phone whose user is unknown takes only REGISTERs from its own address, and the grant of a
registrar that rewrote the Contact is still found."""
from __future__ import annotations

import threading

import pytest

from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.sources.gateway_poller import GatewayPoller
from fleet.evidence.sources.targets import Follower, Targets, site_targets
from fleet.evidence.sources import targets as wire_targets
from fleet.evidence.wire.pcap import PcapStreamParser
from fleet.evidence.wire.attribution import Attribution, WireTarget
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.config.inventory import Inventory
from fleet.state.observe import REGISTERED, UNKNOWN, UNREGISTERED, Observation, PhoneState, apply, from_line_info
from fleet.state.phone_row import row_for_json
from fleet.phoneconf.predict import granted_expiry
from fleet.experiment.verdict import timeline
from test_wire_evidence import A_ADDR, B_ADDR, PROVIDER, T0, eth, pcap, register, response

MAC = "0004f2000001"
MAC_B = "0004f2000002"
CONFIGURED = [{"index": 1, "address": "prov.example", "register": True},
              {"index": 2, "address": "192.168.10.1", "register": True}]


def _wire(server: int, state: str, t: float, reg: int = 1, expires: int | None = None) -> Observation:
    return Observation(mac=MAC, t=t, source="wire", reg=reg, server=server, state=state, code=200, expires=expires)


def _line1_up() -> PhoneState:
    st = PhoneState(mac=MAC)
    apply(st, _wire(1, REGISTERED, 10.0, expires=600), [1, 2])
    assert st.working_server == 1
    return st


# ---------------------------------------------------------------- 1. per-registration state

def test_line_2_unregistration_event_leaves_line_1_registered():
    st = _line1_up()
    changed = apply(st, Observation(mac=MAC, t=11.0, source="event", reg=2, server=None, state=UNREGISTERED,
                                    detail="LineUnregistrationEvent"), [1, 2])
    assert not changed and st.working_server == 1 and st.servers[1]["state"] == REGISTERED, st.to_dict()
    assert st.line_state == REGISTERED and st.line_down_at is None, "a line 2 event is no shutdown of line 1"
    assert st.line(2).line_state == UNREGISTERED and st.line(2).line_down_at == 11.0
    # the same event for line 1 still takes line 1 down
    apply(st, Observation(mac=MAC, t=12.0, source="event", reg=1, server=None, state=UNREGISTERED), [1, 2])
    assert st.working_server is None and st.servers[1]["state"] == UNREGISTERED and st.line_down_at == 12.0


def test_line_2_rest_line_info_does_not_overwrite_line_1_servers():
    st = _line1_up()
    line2 = {"LineNumber": "2", "RegistrationStatus": "Registered", "ProxyAddress": "192.168.10.1"}
    for obs in from_line_info(MAC, 11.0, line2, CONFIGURED):
        apply(st, obs, [1, 2])
    assert st.working_server == 1 and st.servers[1]["state"] == REGISTERED and 2 not in st.servers, st.to_dict()
    assert st.line(2).working_server == 2 and st.line(2).servers[1]["state"] == UNREGISTERED


def test_per_line_state_survives_json_and_status_row_keeps_line_1_shape():
    st = _line1_up()
    apply(st, _wire(1, UNREGISTERED, 10.5, reg=2), [1, 2])
    apply(st, _wire(2, REGISTERED, 11.0, reg=2, expires=300), [1, 2])
    d = st.to_dict()
    assert d["working_server"] == 1 and set(d["servers"]) == {"1"} and d["lines"]["2"]["working_server"] == 2
    back = PhoneState.from_dict(d)
    assert back == st and back.line(2).servers[2]["until"] == 311.0
    # state stored before lines were kept apart (no "lines") still reads as line 1
    old = PhoneState.from_dict({k: v for k, v in d.items() if k != "lines"})
    assert old.working_server == 1 and old.lines.keys() == {1}
    row = row_for_json({"mac": MAC, "site": "hq", "model": "VVX 410", "state": d, "configured_servers": CONFIGURED})
    assert row["working_server"] == 1
    assert [(s["index"], s["state"]) for s in row["servers"]] == [(1, REGISTERED), (2, UNKNOWN)]
    assert row["lines"]["2"]["working_server"] == 2
    assert [(s["index"], s["state"]) for s in row["lines"]["2"]["servers"]] == [(1, UNREGISTERED), (2, REGISTERED)]


def test_experiment_lane_and_granted_expiry_are_line_1s():
    obs = [_wire(1, REGISTERED, 10.0, expires=600).to_dict() | {"working_server": 1},
           _wire(1, REGISTERED, 11.0, reg=2, expires=3600).to_dict() | {"working_server": 1}]
    assert granted_expiry(obs, 1) == 600 and granted_expiry(obs, 1, reg=2) == 3600
    lane = timeline(obs, None, 0.0)
    assert [(e["t"], e["server"]) for e in lane] == [(10.0, 1)]


# ---------------------------------------------------------------- 2. wild targets: only from the phone's address

GATEWAY_WAN = ("198.51.100.7", 5060)


def _evidence(targets: list[WireTarget]) -> WireEvidence:
    ev = WireEvidence(Attribution(targets))
    ev.outcomes = []
    return ev


def _run(ev: WireEvidence, packets) -> list:
    parser = PcapStreamParser()
    out = []
    for rec in parser.feed(pcap([(t, eth(s, d, p)) for t, s, d, p in packets])):
        out += ev.feed_frame(rec.t, rec.linktype, rec.frame)
    return out


def _exchange(user: str, src: tuple[str, int], t: float, dst=PROVIDER, cseq: int = 1) -> list:
    req = register(user, src, dst, call_id=f"cid-{user}-{src[0]}", cseq=cseq)
    return [(t, src, dst, req), (t + 0.05, dst, src, response(req, 200, contacts=[f"<sip:{user}@{src[0]}:{src[1]}>;expires=600"]))]


def test_a_phone_without_a_known_user_takes_only_its_own_registers():
    wild = WireTarget(mac=MAC, reg=1, server=1, address=PROVIDER, user="", phone_ip=A_ADDR[0])
    other = WireTarget(mac=MAC_B, reg=1, server=1, address=PROVIDER, user="1002", phone_ip=B_ADDR[0])
    ev = _evidence([wild, other])
    out = _run(ev, _exchange("1012", B_ADDR, T0)               # phone B's line 2, whose user nobody has
               + _exchange("trunk", GATEWAY_WAN, T0 + 1)         # the gateway's own trunk REGISTER from the WAN
               + _exchange("1001", A_ADDR, T0 + 2))              # phone A itself
    assert [(o.mac, o.t) for o in out] == [(MAC, pytest.approx(T0 + 2.05))], ev.build.attribution.stats
    assert ev.build.attribution.stats["no_matching_phone"] == 2


def test_gateway_bindings_of_a_phones_other_line_are_not_its_user_less_line_1():
    wild = WireTarget(mac=MAC, reg=1, server=2, address=("192.168.10.1", 5060), user="", phone_ip=A_ADDR[0])
    line2 = WireTarget(mac=MAC, reg=2, server=2, address=("192.168.10.1", 5060), user="1012", phone_ip=A_ADDR[0])
    bindings = [gb.Binding(aor="1012", contact=f"sip:1012@{A_ADDR[0]}:5060", expires_in=300)]
    obs = {o.reg: o.state for o in gb.observations(bindings, [wild, line2], T0)}
    assert obs == {1: UNREGISTERED, 2: REGISTERED}


# ---------------------------------------------------------------- 3. targets for every line; no rebuild loop

def _site():
    return Inventory.model_validate({"name": "x", "sites": [{"name": "a", "gateway": "192.168.10.1",
                                                             "boot_server": {"url": "file:///x"},
                                                             "phones": [{"mac": MAC, "model": "VVX 410",
                                                                         "address": A_ADDR[0], "credentials": "c"}]}]}).sites[0]


PARAMS = {"reg.1.address": "1001", "reg.2.address": "1012@example.com", "reg.1.server.1.address": PROVIDER[0],
          "voIpProt.server.1.address": PROVIDER[0]}


def test_every_registration_with_an_address_has_targets_and_observations_carry_its_number():
    targets = site_targets(_site(), {MAC: PARAMS}, lambda name: [])
    assert sorted((t.reg, t.server, t.user, t.address) for t in targets) == [
        (1, 1, "1001", PROVIDER), (2, 1, "1012", PROVIDER)]
    ev = _evidence(targets)
    out = _run(ev, _exchange("1012", A_ADDR, T0) + _exchange("1001", A_ADDR, T0 + 1))
    assert [(o.reg, o.server, o.state) for o in out] == [(2, 1, REGISTERED), (1, 1, REGISTERED)]


def test_the_gateway_poller_has_a_target_for_each_line_on_the_gateway():
    params = PARAMS | {"voIpProt.server.2.address": "192.168.10.1"}
    targets = Targets(_site(), lambda: {MAC: dict(params)})
    targets.refresh(force=True)
    poller = GatewayPoller.__new__(GatewayPoller)   # its targets only: no router
    poller.site, poller.targets = targets.site, targets
    assert sorted((t.reg, t.server, t.user) for t in poller.gateway_targets()) == [(1, 2, "1001"), (2, 2, "1012")]


def test_traffic_that_never_matches_asks_for_one_rebuild_per_destination_and_user(monkeypatch):
    monkeypatch.setattr(wire_targets, "RETARGET_SOON_S", 0.0)
    calls = []
    targets = Targets(_site(), lambda: calls.append(1) or {MAC: dict(PARAMS)})
    targets.refresh(force=True)
    ev = _evidence(targets.wire)
    follow = Follower(ev, targets)
    stranger = ("192.168.10.99", 5060)
    out = []
    for i in range(5):
        out += _run(ev, _exchange("9999", stranger, T0 + i, dst=("203.0.113.99", 5060), cseq=i + 1))  # another system's
        follow.tick()
    assert ev.stats["requests"] == 5 and out == [], ev.stats
    assert len(calls) == 2, "one rebuild for the unknown destination, not one per refresh"
    _run(ev, _exchange("9998", stranger, T0 + 10, dst=("203.0.113.98", 5060)))      # a new one: one more
    follow.tick()
    follow.tick()
    assert len(calls) == 3


# ---------------------------------------------------------------- 4. granted expiry, Contact rewritten

def _granted(contacts: list[str], expires: int | None = None) -> list:
    req = register("1001", A_ADDR, expires=3600)
    ev = _evidence([WireTarget(mac=MAC, reg=1, server=1, address=PROVIDER, user="1001")])
    return [o.expires for o in _run(ev, [(T0, A_ADDR, PROVIDER, req),
                                         (T0 + 0.05, PROVIDER, A_ADDR, response(req, 200, contacts=contacts, expires=expires))])]


def test_the_grant_of_a_rewritten_contact_is_the_phones_users_contact():
    nat = "<sip:1001@198.51.100.20:41234;line=x>;expires=600"
    assert _granted([nat]) == [600], "the only contact in the answer"
    assert _granted(["<sip:other@198.51.100.9:5060>;expires=900", nat]) == [600], "the only one with the phone's user"
    assert _granted(["<sip:a@198.51.100.9:5060>;expires=900", "<sip:b@198.51.100.9:5060>;expires=800"],
                    expires=700) == [700], "no contact is the phone's: the Expires header"
    assert _granted([f"<sip:1001@{A_ADDR[0]}:{A_ADDR[1]}>;expires=1200", nat]) == [1200], "its own contact first"


# ---------------------------------------------------------------- 5. one rebuild at a time

def test_targets_are_rebuilt_by_one_thread_at_a_time():
    inside, most, entered, release = [0], [0], threading.Event(), threading.Event()
    lock = threading.Lock()

    def params():
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            if inside[0] > 1:
                release.set()          # a second rebuild got in beside the first: let the first go on
        entered.set()
        release.wait(0.5)              # the first rebuild holds on until a second one gets in (or it gives up)
        with lock:
            inside[0] -= 1
        return {MAC: dict(PARAMS)}

    targets = Targets(_site(), params)
    threads = [threading.Thread(target=targets.refresh, kwargs={"force": True}) for _ in range(2)]
    threads[0].start()
    assert entered.wait(10), "the first rebuild never started"
    threads[1].start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a rebuild hung"
    assert most[0] == 1 and targets.generation == 2, (most[0], targets.generation)


# ---------------------------------------------------------------- the store: `fleet status --json` and rollouts

def test_stored_state_and_status_json_keep_line_1_apart_from_line_2(redis_url):
    import json

    from fleet.state.store import Store

    store = Store(redis_url)
    mac = "0004f20000e2"
    store.register_phones("lines-hq", [{"mac": mac, "model": "VVX 410", "address": A_ADDR[0], "servers": CONFIGURED}])
    try:
        store.record_observations([
            Observation(mac=mac, t=10.0, source="wire", reg=1, server=1, state=REGISTERED, code=200, expires=600),
            Observation(mac=mac, t=11.0, source="event", reg=2, server=None, state=UNREGISTERED,
                        detail="LineUnregistrationEvent")])
        state = store.phone_state(mac)
        assert state.working_server == 1 and state.line(2).line_state == UNREGISTERED, state.to_dict()
        (row,) = json.loads(store.status_json("lines-hq"))
        assert row["working_server"] == 1 and row["servers"][0]["state"] == REGISTERED, row
        assert row["lines"]["2"]["working_server"] is None
    finally:
        store.forget_phones([mac])


# ---------------------------------------------------------------- 2b. the user from the site's own files

def _cfg(params: dict[str, str]) -> bytes:
    return ("<polycomConfig><x " + " ".join(f'{k}="{v}"' for k, v in params.items()) + "/></polycomConfig>").encode()


def test_a_user_only_the_site_files_give_is_read_from_the_boot_server_once(tmp_path):
    from fleet.drivers.publish import open_publisher
    from fleet.config.inventory import Credentials
    from fleet.sites.users import SiteUsers

    boot = tmp_path / "boot"
    (boot / "ov").mkdir(parents=True)
    (boot / "000000000000.cfg").write_bytes(
        b'<APPLICATION CONFIG_FILES="[PHONE_MAC_ADDRESS]-lines.cfg, site.cfg" OVERRIDES_DIRECTORY="ov/"/>')
    (boot / "site.cfg").write_bytes(_cfg({"reg.1.address": "site-wide", "reg.2.address": "1012",
                                          "reg.3.address": "", "reg.1.label": "x"}))
    (boot / f"{MAC}-lines.cfg").write_bytes(_cfg({"reg.1.address": "1001"}))        # listed first: it wins
    (boot / "ov" / f"{MAC}-web.cfg").write_bytes(_cfg({"reg.2.address": "1022"}))    # overrides win over both
    opened = []
    users = SiteUsers(f"file://{boot}/", lambda url: opened.append(url) or open_publisher(url, Credentials()),
                      {MAC: "VVX 410", MAC_B: "VVX 410"})
    known = {"reg.1.address": "2002", "reg.1.server.1.address": PROVIDER[0]}
    filled = users.fill({MAC: {"voIpProt.server.1.address": PROVIDER[0]}, MAC_B: known})
    assert filled[MAC] == {"voIpProt.server.1.address": PROVIDER[0], "reg.1.address": "1001", "reg.2.address": "1022"}
    assert filled[MAC_B] is known, "a phone whose user fleet knows is left alone"
    targets = site_targets(_site(), {MAC: filled[MAC]}, lambda name: [])
    assert sorted((t.reg, t.user) for t in targets) == [(1, "1001"), (2, "1022")]
    users.fill({MAC: {"reg.1.server.1.address": PROVIDER[0]}})
    assert users.reads == 1, "read once, then kept"
    assert users.fill({MAC_B: known}) == {MAC_B: known} and users.reads == 1


def test_a_boot_server_that_cannot_be_read_leaves_the_configuration_as_it_was(tmp_path):
    from fleet.drivers.publish import open_publisher
    from fleet.config.inventory import Credentials
    from fleet.sites.users import SiteUsers

    users = SiteUsers(f"file://{tmp_path}/none/", lambda url: open_publisher(url, Credentials()), {MAC: "VVX 410"})
    params = {MAC: {"reg.1.server.1.address": PROVIDER[0]}}
    assert users.fill(params) == params and users.reads == 1


def test_a_phone_known_by_name_is_matched_by_the_address_the_name_resolves_to():
    site = Inventory.model_validate({"name": "x", "sites": [{"name": "a", "gateway": "192.168.10.1",
                                                             "boot_server": {"url": "file:///x"},
                                                             "phones": [{"mac": MAC, "model": "VVX 410",
                                                                         "address": "phone-a.lan", "credentials": "c"}]}]}).sites[0]
    names = {"phone-a.lan": [A_ADDR[0]]}
    targets = site_targets(site, {MAC: {"voIpProt.server.1.address": PROVIDER[0]}},
                                        lambda name: names.get(name, []))
    assert [(t.user, t.phone_ip) for t in targets] == [("", A_ADDR[0])]
    out = _run(_evidence(targets), _exchange("1001", A_ADDR, T0))
    assert [o.mac for o in out] == [MAC]
