"""Attribution behind an outbound proxy (issue 10): a phone that sends every REGISTER, to either server, through
the site gateway as its outbound proxy is still attributed per server, by the Request-URI's host.

HEP from such a proxy shows four legs per request (phone -> proxy, proxy -> upstream, and both replies); only the
phone's own transaction may give an observation, exactly once. Datagrams are fed as HEP delivers them.
"""
from __future__ import annotations

from fleet.evidence.wire.transactions import host_key, uri_host
from fleet.evidence.wire.decode import Datagram
from fleet.evidence.wire.attribution import Attribution, targets_for
from fleet.evidence.wire.pipeline import WireEvidence
from fleet.phoneconf.servers import outbound_proxy, phone_servers, registration_user
from fleet.evidence.sources.targets import transaction_timeouts
from fleet.state.observe import REGISTERED, UNREGISTERED

MAC = "0004f2000001"
PHONE = ("192.168.10.21", 5060)
GATEWAY = ("192.168.10.1", 5060)            # the site gateway, also the phones' outbound proxy
UPSTREAM = ("203.0.113.10", 5060)           # where the proxy relays the provider's requests
DNS = {"voip.provider.example": [UPSTREAM[0]]}
T0 = 1_795_700_000.0

# server 1 the provider by name (through the proxy), server 2 the gateway by address (useOutboundProxy=0)
PARAMS = {"reg.1.address": "1001", "reg.1.server.1.address": "voip.provider.example",
          "reg.1.server.1.retryTimeOut": "400", "reg.1.server.1.retryMaxCount": "3",
          "reg.1.server.2.address": GATEWAY[0], "reg.1.server.2.useOutboundProxy": "0",
          "reg.1.outboundProxy.address": GATEWAY[0], "reg.1.outboundProxy.port": "0"}


def targets(params: dict[str, str], resolve=lambda name: DNS[name]):
    return targets_for(MAC, 1, registration_user(params), phone_servers(params), resolve, phone_ip=PHONE[0])


def evidence(params: dict[str, str] = PARAMS) -> WireEvidence:
    tg = targets(params)
    return WireEvidence(Attribution(tg), source="hep", timeouts=transaction_timeouts(tg, {MAC: params}))


def request(method: str, ruri: str, src: tuple[str, int], *, branch: str, cseq: int = 1, call_id: str = "cid-1",
            user: str = "1001", via_below: str = "") -> bytes:
    host = ruri.split("@")[-1].split(":")[1] if "@" not in ruri else ruri.split("@")[1]
    lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch={branch}"]
    if via_below:
        lines.append(via_below)
    lines += ["Max-Forwards: 70", f"From: <sip:{user}@{host}>;tag=f1", f"To: <sip:{user}@{host}>" if method == "REGISTER"
              else f"To: <{ruri}>", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
              f"Contact: <sip:{user}@{PHONE[0]}:{PHONE[1]}>"]
    if method == "REGISTER":
        lines.append("Expires: 60")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def reply(req: bytes, code: int, *, drop_top_via: bool = False) -> bytes:
    head = req.decode().split("\r\n\r\n")[0].split("\r\n")[1:]
    vias = [h for h in head if h.startswith("Via:")][1 if drop_top_via else 0:]
    rest = [h for h in head if h.split(":")[0] in ("From", "To", "Call-ID", "CSeq")]
    rest = [h + ";tag=srv" if h.startswith("To:") else h for h in rest]
    extra = ["Contact: <sip:1001@192.168.10.21:5060>;expires=60"] if code == 200 and b"REGISTER" in req[:9] else []
    return ("\r\n".join([f"SIP/2.0 {code} X", *vias, *rest, *extra]) + "\r\nContent-Length: 0\r\n\r\n").encode()


def relayed(req: bytes, branch: str) -> bytes:
    """The proxy's copy of the phone's request: its own Via on top, the phone's below."""
    text = req.decode()
    first, rest = text.split("\r\n", 1)
    return f"{first}\r\nVia: SIP/2.0/UDP {GATEWAY[0]}:{GATEWAY[1]};branch={branch}\r\n{rest}".encode()


def four_legs(req: bytes, code: int | None, t: float, branch: str) -> list[Datagram]:
    """What the proxy's siptrace sends for one relayed request: in, out upstream, and (when answered) both replies."""
    out = relayed(req, branch)
    legs = [Datagram(t, PHONE, GATEWAY, req), Datagram(t + 0.001, GATEWAY, UPSTREAM, out)]
    if code is not None:
        legs += [Datagram(t + 0.02, UPSTREAM, GATEWAY, reply(out, code)),
                 Datagram(t + 0.021, GATEWAY, PHONE, reply(out, code, drop_top_via=True))]
    return legs


def feed(ev: WireEvidence, datagrams: list[Datagram]) -> list:
    out = []
    for dg in datagrams:
        out += ev.feed_datagram(dg)
    return out


def test_servers_behind_the_proxy_share_its_address_and_differ_by_request_uri_host():
    tg = targets(PARAMS)
    assert [(t.server, t.address, t.uri_host) for t in tg] == [
        (1, GATEWAY, "voip.provider.example"), (2, GATEWAY, GATEWAY[0])]
    assert transaction_timeouts(tg, {MAC: PARAMS})[(*GATEWAY, "voip.provider.example")] == 1.6


def test_a_relayed_register_is_observed_once_for_the_server_its_request_uri_names():
    ev = evidence()
    r1 = request("REGISTER", "sip:voip.provider.example", PHONE, branch="z9hG4bK-p1")
    r2 = request("REGISTER", f"sip:{GATEWAY[0]}", PHONE, branch="z9hG4bK-g1", call_id="cid-2")
    obs = feed(ev, four_legs(r1, 200, T0, "z9hG4bK-k1"))
    obs += feed(ev, [Datagram(T0 + 1, PHONE, GATEWAY, r2), Datagram(T0 + 1.01, GATEWAY, PHONE, reply(r2, 200))])
    assert [(o.server, o.state, o.source) for o in obs] == [(1, REGISTERED, "hep"), (2, REGISTERED, "hep")]
    assert ev.build.attribution.stats["relayed"] == 1 and ev.build.attribution.stats["unknown_destination"] == 0
    assert obs[0].address == f"{GATEWAY[0]}:{GATEWAY[1]}"


def test_an_unanswered_relayed_register_times_out_once_at_the_phones_own_timeout_and_a_late_408_is_ignored():
    ev = evidence()
    r1 = request("REGISTER", "sip:voip.provider.example", PHONE, branch="z9hG4bK-p2")
    assert feed(ev, four_legs(r1, None, T0, "z9hG4bK-k2")) == []
    obs = ev.tick(T0 + 1.7)                        # 400 ms x (3 + 1): the phone gave up at T0 + 1.6
    assert [(o.server, o.state, o.t) for o in obs] == [(1, UNREGISTERED, T0 + 1.6)]
    assert ev.tick(T0 + 33) == []                  # the relayed leg's own timeout: nobody's
    late = reply(relayed(r1, "z9hG4bK-k2"), 408, drop_top_via=True)
    assert feed(ev, [Datagram(T0 + 30, GATEWAY, PHONE, late)]) == []
    assert ev.build.attribution.stats["relayed"] == 1


def test_request_uri_host_compares_case_and_spelling_insensitively_and_an_unknown_host_is_not_guessed():
    assert uri_host("sip:1001@VOIP.Provider.Example.:5070;transport=udp") == "voip.provider.example"
    assert uri_host("sip:[2001:DB8::0:1]:5060") == "2001:db8::1" == host_key("2001:db8:0::1")
    assert uri_host("tel:+15551234") == ""
    by_ip = dict(PARAMS, **{"reg.1.server.1.address": UPSTREAM[0]})      # the provider configured by address
    ev = evidence(by_ip)
    for ruri, expected in ((f"sip:{UPSTREAM[0]}", [1]), ("sip:VOIP.PROVIDER.EXAMPLE", []),
                           (f"sip:{GATEWAY[0]}:5060", [2]), ("sip:elsewhere.example", [])):
        req = request("REGISTER", ruri, PHONE, branch=f"z9hG4bK-{ruri[-6:]}", call_id=ruri)
        obs = feed(ev, [Datagram(T0, PHONE, GATEWAY, req), Datagram(T0 + 0.01, GATEWAY, PHONE, reply(req, 200))])
        assert [o.server for o in obs] == expected, ruri
    assert ev.build.attribution.stats["no_matching_phone"] == 2   # a server it has not: its configuration moved?
    ev = evidence()                                 # configured by name: the name, in any case, is server 1
    req = request("REGISTER", "sip:VOIP.Provider.Example", PHONE, branch="z9hG4bK-n")
    assert [o.server for o in feed(ev, [Datagram(T0, PHONE, GATEWAY, req),
                                        Datagram(T0 + 0.01, GATEWAY, PHONE, reply(req, 200))])] == [1]


def test_a_call_through_the_proxy_is_the_server_its_request_uri_names():
    ev = evidence()
    inv = request("INVITE", "sip:2000@voip.provider.example", PHONE, branch="z9hG4bK-i1", call_id="call-1")
    obs = feed(ev, four_legs(inv, 486, T0, "z9hG4bK-k3"))
    assert [(o.kind, o.server, o.code) for o in obs] == [("call", 1, 486)]


def test_use_outbound_proxy_and_the_phone_wide_proxy():
    sbc = {"reg.1.address": "1001", "reg.1.server.1.address": "voip.provider.example",
           "reg.1.server.2.address": GATEWAY[0], "voIpProt.SIP.outboundProxy.address": "10.0.0.5"}
    assert outbound_proxy(sbc) == {"address": "10.0.0.5", "port": 0, "transport": ""}
    # the phone-wide proxy, port 0 = 5060, for both servers (no useOutboundProxy=0)
    assert [(t.server, t.address) for t in targets(sbc)] == [(1, ("10.0.0.5", 5060)), (2, ("10.0.0.5", 5060))]
    # server 2 not through it: its own address again
    direct = dict(sbc, **{"reg.1.server.2.useOutboundProxy": "0"})
    assert [(t.server, t.address) for t in targets(direct)] == [(1, ("10.0.0.5", 5060)), (2, GATEWAY)]
    # the line's own proxy wins over the phone-wide one, with its port
    line = dict(direct, **{"reg.1.outboundProxy.address": "10.0.0.6", "reg.1.outboundProxy.port": "5080"})
    assert [(t.server, t.address) for t in targets(line)] == [(1, ("10.0.0.6", 5080)), (2, GATEWAY)]
    # without a proxy nothing changes: the provider's resolved address
    plain = {k: v for k, v in sbc.items() if "outboundProxy" not in k}
    assert [(t.server, t.address) for t in targets(plain)] == [(1, UPSTREAM), (2, GATEWAY)]


def test_phone_servers_take_a_server_whole_from_one_prefix():
    """Once reg.x.server.y.address is set, that server's values all come from reg.x.server.y.* (a
    voIpProt.server.y.port does not leak in); voIpProt.server.y.* serves a server without one."""
    params = {"reg.1.server.1.address": "voip.provider.example", "voIpProt.server.1.port": "5080",
              "voIpProt.server.1.transport": "TLS", "voIpProt.server.2.address": GATEWAY[0],
              "voIpProt.server.2.port": "5062"}
    assert [(s["index"], s["address"], s["port"], s["transport"]) for s in phone_servers(params)] == [
        (1, "voip.provider.example", 0, ""), (2, GATEWAY[0], 5062, "")]
