"""One answer to "which lines and servers does this phone register" (fleet.phoneconf.servers), read alike by the
rollout's refresh-load check and by wire attribution: a phone configured on line 2 only gets one answer."""
from __future__ import annotations

from fleet.config.inventory import Inventory
from fleet.evidence.sources import gateway_bindings as gb
from fleet.evidence.sources.gateway_poller import GatewayPoller
from fleet.evidence.sources.targets import Targets, site_targets
from fleet.evidence.wire.attribution import Attribution
from fleet.evidence.wire.pcap import PcapStreamParser
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.phoneconf.servers import gateway_server, phone_servers, registration_user, registrations
from fleet.rollout.plan import refresh_load
from fleet.state.observe import REGISTERED
from test_wire_evidence import A_ADDR, GATEWAY, PROVIDER, T0, eth, pcap, register, response

MAC = "0004f2000001"
LINE_2_ONLY = {"reg.2.address": "1012", "voIpProt.server.1.address": PROVIDER[0],
               "voIpProt.server.2.address": GATEWAY[0]}


def _site():
    return Inventory.model_validate({"name": "x", "sites": [{
        "name": "a", "gateway": GATEWAY[0], "boot_server": {"url": "file:///x"},
        "phones": [{"mac": MAC, "model": "VVX 410", "address": A_ADDR[0], "credentials": "c"}]}]}).sites[0]


def _observe(targets, packets) -> tuple[list, WireEvidence]:
    ev = WireEvidence(Attribution(targets, "wire"), source="wire")
    out = []
    for rec in PcapStreamParser().feed(pcap([(t, eth(s, d, p)) for t, s, d, p in packets])):
        out += ev.feed_frame(rec.t, rec.linktype, rec.frame)
    return out, ev


def _exchange(user: str, t: float, dst=PROVIDER) -> list:
    req = register(user, A_ADDR, dst, call_id=f"cid-{user}-{t}")
    ok = response(req, 200, contacts=[f"<sip:{user}@{A_ADDR[0]}:{A_ADDR[1]}>;expires=600"])
    return [(t, A_ADDR, dst, req), (t + 0.05, dst, A_ADDR, ok)]


def test_a_line_registers_where_its_address_is_set_and_line_1_stands_in_for_an_unnamed_one():
    assert registrations(LINE_2_ONLY) == [2]
    assert registrations({"reg.1.address": "1001", "reg.2.address": " ", "reg.3.address": "1003"}) == [1, 3]
    assert registrations({"voIpProt.server.1.address": PROVIDER[0]}) == [1]     # its user is set where fleet cannot see
    assert registrations({"reg.0.address": "x", "reg.100.address": "y", "reg.2.label": "z"}) == [1]
    assert registration_user(LINE_2_ONLY, 2) == "1012" and registration_user(LINE_2_ONLY, 1) == ""
    assert registration_user({"reg.1.address": "sip:1001@example.com"}) == "1001"


def test_a_phone_configured_on_line_2_only_the_refresh_load_check_and_wire_attribution_agree():
    """The plan counts exactly the registrations wire attribution expects and attributes: line 2 at both servers,
    and no line 1 (a line-1 target would read the phone's line 1 as unregistered for ever, and a REGISTER of
    another user from the phone's address as its line 1)."""
    load = refresh_load([("a", LINE_2_ONLY)])
    expected = {addr: v["registrations"] for addr, v in load.items()}
    assert expected == {PROVIDER[0]: 1, GATEWAY[0]: 1}

    targets = site_targets(_site(), {MAC: LINE_2_ONLY}, lambda name: [])
    expecting: dict[str, set] = {}
    for t in targets:
        expecting.setdefault(t.address[0], set()).add((t.mac, t.reg, t.server))
    assert {addr: len(regs) for addr, regs in expecting.items()} == expected
    assert {t.reg for t in targets} == {2} and {t.user for t in targets} == {"1012"}

    out, ev = _observe(targets, _exchange("1012", T0) + _exchange("1012", T0 + 1, GATEWAY)
                       + _exchange("1001", T0 + 2))          # someone else's user from the phone's address
    attributed = {(o.address.rsplit(":", 1)[0], o.reg, o.server, o.state) for o in out}
    assert attributed == {(PROVIDER[0], 2, 1, REGISTERED), (GATEWAY[0], 2, 2, REGISTERED)}
    assert {addr: len({(o.reg, o.server) for o in out if o.address.startswith(addr + ":")}) for addr in expected} \
        == expected
    assert ev.build.attribution.stats["no_matching_phone"] == 1, ev.build.attribution.stats


def test_the_gateway_source_of_a_line_2_only_phone_speaks_for_line_2_only():
    targets = Targets(_site(), lambda: {MAC: dict(LINE_2_ONLY)})
    targets.refresh(force=True)
    poller = GatewayPoller.__new__(GatewayPoller)      # its targets only: no router
    poller.site, poller.targets = targets.site, targets
    gw_targets = poller.gateway_targets()
    assert sorted((t.reg, t.server, t.user) for t in gw_targets) == [(2, 2, "1012")]
    bound = [gb.Binding(aor="1012", contact=f"sip:1012@{A_ADDR[0]}:5060", expires_in=300)]
    assert {(o.reg, o.state) for o in gb.observations(bound, gw_targets, T0)} == {(2, REGISTERED)}


def test_which_server_the_gateway_is():
    params = {"reg.1.server.1.address": PROVIDER[0], "reg.1.server.2.address": GATEWAY[0]}
    assert gateway_server(params, 1, GATEWAY[0]) == 2
    assert gateway_server(params, 1, GATEWAY[0], configured=3) == 3           # the inventory says
    assert gateway_server(params, 1, "192.0.2.99") is None
    assert [s["index"] for s in phone_servers(params, 1)] == [1, 2]
