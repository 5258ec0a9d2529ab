"""The virtual phone follows its firmware family: retry backoff, failover switches, whole-server precedence,
request validation. The phone's registration logic is driven directly (no boot server); INVITEs travel over
real UDP sockets on loopback addresses in an unused corner of a lab net this test process claims (hil.netlock), so
two suites on one machine never bind the same ones: 127.(N+40).9.x, 127.(N+100).9.x."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from hil.groundtruth import GroundTruth
from hil import netlock, phone_inbound
from hil.phone import VirtualPhone
from hil.phone_types import DOWN, UP, PhoneSpec
from sipwire import message as sip
from sipwire.endpoint import SipEndpoint, TransactionTimers

_NET = netlock.claim("auto", 1, lab="test_phone_family")      # held for this test process's life
_SRV, _LAN = f"127.{_NET.net + 40}", f"127.{_NET.net + 100}"
PHONE_IP, SERVER1, SERVER2 = f"{_LAN}.9.2", f"{_SRV}.9.1", f"{_SRV}.9.2"
STRANGER = f"{_SRV}.9.3"        # no server of the phone's


def phone(family: str, params: dict[str, str], model: str = "VVX 410", fixed_retry: float = 30.0) -> VirtualPhone:
    p = VirtualPhone(PhoneSpec(mac="0004f2090902", model=model, ip=PHONE_IP, boot_url="http://127.0.0.1:1/",
                               family=family, fixed_retry=fixed_retry), GroundTruth())
    p.params = {"reg.1.address": "1001", **params}
    p._configure_registrations()
    return p


TWO = {"reg.1.server.1.address": SERVER1, "reg.1.server.2.address": SERVER2}


def test_uc5_backoff_follows_rfc5626_each_wait_50_to_100_percent():
    """RFC 5626 4.5, named by the UC Software guides for registerRetry.*: W = min(max, base x 2^failures)."""
    srv = phone("uc-5.x", TWO | {"reg.1.server.1.registerRetry.baseTimeOut": "10",
                                 "reg.1.server.1.registerRetry.maxTimeOut": "60"}).regs[0].servers[0]
    assert srv.backoff and (srv.retry_interval, srv.retry_max) == (10, 60)
    rng = random.Random(7)
    for failures, nominal in ((1, 20), (2, 40), (3, 60), (9, 60)):
        srv.failures = failures
        waits = [srv.next_retry(rng) for _ in range(400)]
        assert nominal * 0.5 <= min(waits) and max(waits) <= nominal, (failures, min(waits), max(waits))
        assert max(waits) - min(waits) > nominal * 0.3          # randomised, not one fixed value


@pytest.mark.parametrize("family", ["sip-2.x", "sip-3.x", "uc-4.0"])
def test_families_without_register_retry_retry_at_a_fixed_interval(family):
    p = phone(family, TWO | {"reg.1.server.1.registerRetry.baseTimeOut": "10"}, model="SoundPoint IP 650", fixed_retry=45)
    srv = p.regs[0].servers[0]
    for failures in (1, 2, 5):
        srv.failures = failures
        assert srv.next_retry() == 45          # the parameter does not exist on this firmware: ignored


def test_uc5_defaults_register_with_the_primary_only():
    """failOver.reRegisterOn defaults to 0: the phone never sends server 2 a REGISTER. It still sends it new
    calls (the servers are assumed to share registrations), unless onlySignalWithRegistered applies, which
    needs reRegisterOn and failRegistrationOn set."""
    p = phone("uc-5.x", TWO)
    primary, fallback = p.regs[0].servers
    assert p._sends_register(primary) and not p._sends_register(fallback)
    assert p._may_signal_via(fallback)
    on = phone("uc-5.x", TWO | {"reg.1.server.2.failOver.reRegisterOn": "1"})
    assert on._sends_register(on.regs[0].servers[1]) and not on._may_signal_via(on.regs[0].servers[1])  # not up yet
    # a register=0 server with every switch on: no signalling through it (R5 does not hold there)
    strict = phone("uc-5.x", TWO | {"reg.1.server.2.register": "0", "reg.1.server.2.failOver.reRegisterOn": "1",
                                    "reg.1.server.2.failOver.failRegistrationOn": "1"})
    assert not strict._may_signal_via(strict.regs[0].servers[1])
    loose = phone("uc-5.x", TWO | {"reg.1.server.2.register": "0"})
    assert not loose._sends_register(loose.regs[0].servers[1]) and loose._may_signal_via(loose.regs[0].servers[1])
    # SIP 3.x has none of these switches: it registers with every server (R1)
    sip3 = phone("sip-3.x", TWO, model="SoundPoint IP 650")
    assert all(sip3._sends_register(s) for s in sip3.regs[0].servers)


def test_whole_server_precedence():
    p = phone("uc-5.x", {"reg.1.server.1.address": SERVER1, "voIpProt.server.1.expires": "100",
                         "voIpProt.server.1.port": "5070", "voIpProt.server.2.address": SERVER2,
                         "voIpProt.server.2.expires": "400"})
    primary, fallback = p.regs[0].servers
    assert (primary.expires, primary.port) == (3600, 5060)    # not 100 / 5070 from voIpProt.server.1.*
    assert (fallback.address, fallback.expires) == (SERVER2, 400)


@pytest.mark.parametrize("family,line_proxy,switch", [("uc-5.x", True, True), ("uc-4.0", True, True),
                                                       ("sip-3.x", True, False), ("sip-2.x", False, False)])
def test_outbound_proxy_as_the_family_knows_it(family, line_proxy, switch):
    """Where a server's requests go: the line's outbound proxy (reg.x.outboundProxy.*, port 0 = 5060) where the
    family has it, else the phone-wide voIpProt.SIP.outboundProxy.*; reg.x.server.y.useOutboundProxy=0 keeps a
    server off it where the family has that switch. The Request-URI stays the server's (_register_once)."""
    gw = f"{_SRV}.9.3"
    params = TWO | {"reg.1.outboundProxy.address": gw, "reg.1.outboundProxy.port": "0",
                    "voIpProt.SIP.outboundProxy.address": f"{_SRV}.9.4", "voIpProt.SIP.outboundProxy.port": "5070",
                    "reg.1.server.2.useOutboundProxy": "0"}
    primary, fallback = phone(family, params, model="SoundPoint IP 650" if family == "sip-2.x" else "VVX 410").regs[0].servers
    expected = (gw, 5060) if line_proxy else (f"{_SRV}.9.4", 5070)
    assert primary.proxy == expected
    assert fallback.proxy == (None if switch else expected)
    hops = asyncio.run(_hops(phone(family, params, model="SoundPoint IP 650" if family == "sip-2.x" else "VVX 410")))
    assert hops == [expected, (SERVER2, 5060) if switch else expected]
    assert phone(family, TWO).regs[0].servers[0].proxy is None       # no proxy: the server itself


async def _hops(p: VirtualPhone) -> list[tuple[str, int]]:
    return [await p._next_hop(s) for s in p.regs[0].servers]


def test_register_through_a_proxy_that_never_answers_in_time_fails_over_and_a_late_408_is_harmless():
    """The REGISTER for server 1 goes to the proxy with server 1's Request-URI. The proxy (here a bare endpoint,
    relaying nothing) does not answer: the phone's own timeout (retryTimeOut x (retryMaxCount + 1)) takes server 1
    down; the proxy's 408 for that request arrives later and changes nothing; the next REGISTER is answered."""
    proxy_ip = f"{_SRV}.9.3"
    params = TWO | {"reg.1.outboundProxy.address": proxy_ip, "reg.1.server.2.useOutboundProxy": "0",
                    "reg.1.server.1.retryTimeOut": "100", "reg.1.server.1.retryMaxCount": "3"}
    seen: list[sip.SipMessage] = []

    def proxy_handler(msg: sip.SipMessage, addr):
        seen.append(msg)
        return sip.make_response(msg, 200, "OK", to_tag=sip.new_tag(), received=addr) if len(seen) > 4 else None

    async def run():
        p = phone("uc-5.x", params)
        reg, (primary, _) = p.regs[0], p.regs[0].servers
        proxy = await SipEndpoint.bind(proxy_ip, 5060, proxy_handler, name="proxy")
        p.endpoint = await SipEndpoint.bind(PHONE_IP, 5060, p._on_sip_request, name="phone")
        try:
            first = await p._register_once(reg, primary)                     # 4 sends, no answer
            state_after_timeout = primary.state
            proxy.send(sip.make_response(seen[0], 408, "Request Timeout", to_tag=sip.new_tag()), (PHONE_IP, 5060))
            await asyncio.sleep(0.2)
            state_after_408 = primary.state
            second = await p._register_once(reg, primary)
            return first, state_after_timeout, state_after_408, second, primary.state
        finally:
            p.endpoint.close()
            proxy.close()

    first, after_timeout, after_408, second, final = asyncio.run(run())
    assert (first, after_timeout, after_408) == (False, DOWN, DOWN)
    assert (second, final) == (True, UP)
    assert len(seen) == 5 and {m.uri for m in seen} == {f"sip:{SERVER1}"}, [m.uri for m in seen]


async def _invite_from(source_ip: str) -> int:
    ep = await SipEndpoint.bind(source_ip, 0, name="server")
    try:
        req = sip.make_request("INVITE", f"sip:1001@{PHONE_IP}", local=ep.local, from_uri=f"sip:2000@{source_ip}",
                               to_uri=f"sip:1001@{PHONE_IP}", call_id=sip.new_call_id(source_ip), cseq=1,
                               from_tag=sip.new_tag(), contact=f"<sip:2000@{source_ip}:{ep.local[1]}>")
        resp = await ep.request(req, (PHONE_IP, 5060), TransactionTimers(retry_timeout=0.2, retry_max_count=3))
        return resp.status
    finally:
        ep.close()


@pytest.mark.parametrize("family", ["uc-5.x", "sip-2.x"])
@pytest.mark.parametrize("method", ["source", "both", "all", ""])
def test_request_validation_accepts_every_configured_server_and_refuses_others_with_400(family, method):
    """Source validation accepts INVITEs from the configured registration servers, registered with or not (SIP 2.2
    guide A-14: "the set of target registration servers", lab option source_validation: configured); anything else
    gets 400 Bad Request (operators' reports).
    `all` is `both`; SIP 2.x has the parameters (SIP 2.2 guide)."""
    params = TWO | ({"voIpProt.SIP.requestValidation.1.method": method,
                     "voIpProt.SIP.requestValidation.1.request": "INVITE"} if method else {})

    async def run() -> tuple[int, int, int]:
        p = phone(family, params, model="VVX 410" if family == "uc-5.x" else "SoundPoint IP 650")
        # defaults: registered with server 1 only
        p.regs[0].servers[0].state = UP
        p.endpoint = await SipEndpoint.bind(PHONE_IP, 5060, p._on_sip_request, name="phone")
        try:
            answers = []
            for source in (SERVER1, SERVER2, STRANGER):
                answers.append(await _invite_from(source))
                await asyncio.sleep(phone_inbound.RING_S + phone_inbound.ANSWERED_HOLD_S + 0.2)   # hung up again
            return tuple(answers)
        finally:
            p.endpoint.close()

    via1, via2, other = asyncio.run(run())
    # rang (180), then picked up; both/all add the digest check: a server that does not answer the challenge
    # (these do not) gets the 401 and no call (sipval-digest-challenge)
    assert (via1, via2) == ((401, 401) if method in ("both", "all") else (200, 200))
    assert other == (400 if method else 200)


# ---------------------------------------------------------------- failback modes (failOver.failBack.*)
MODE = "reg.1.server.1.failOver.failBack.mode"
TIMEOUT = "reg.1.server.1.failOver.failBack.timeout"


def test_failback_mode_is_server_1s_and_only_where_the_family_has_it():
    assert phone("uc-5.x", TWO).regs[0].failback.mode == "newRequests"
    fb = phone("uc-5.x", TWO | {MODE: "duration", TIMEOUT: "120"}).regs[0].failback
    assert (fb.mode, fb.timeout) == ("duration", 120)
    # UC Software 4.0 has no failback modes: a mode in its files changes nothing (newRequests)
    assert phone("uc-4.0", TWO | {MODE: "duration", TIMEOUT: "0"}, model="SoundPoint IP 650").regs[0].failback.mode \
        == "newRequests"
    # whole-server precedence: with reg.1.server.1.address set, voIpProt.server.1.* does not apply
    assert phone("uc-5.x", TWO | {"voIpProt.server.1.failOver.failBack.mode": "registration"}).regs[0].failback.mode \
        == "newRequests"
    glob = {"voIpProt.server.1.address": SERVER1, "voIpProt.server.1.failOver.failBack.mode": "registration",
            "reg.1.server.2.address": SERVER2}
    assert phone("uc-5.x", glob).regs[0].failback.mode == "registration"
    # a value the firmware would not take: its default
    assert phone("uc-5.x", TWO | {MODE: "sometimes"}).regs[0].failback.mode == "newRequests"


def _switch(p: VirtualPhone, primary: str, fallback: str) -> None:
    reg = p.regs[0]
    reg.servers[0].state, reg.servers[1].state = primary, fallback
    p._update_working(reg)


@pytest.mark.parametrize("params, wait", [
    ({}, "none"), ({MODE: "duration", TIMEOUT: "90"}, 90.0), ({MODE: "duration", TIMEOUT: "0"}, None),
    ({MODE: "DNSTTL"}, 30.0), ({MODE: "registration"}, None)])
def test_after_a_failover_the_primary_is_held_as_its_mode_says(params, wait):
    """The primary is held only after a failover from it to a fallback: newRequests never; duration for its
    timeout (0: until a failover on the fallback); DNSTTL for the TTL of the primary's answer (the fallback is an
    address); registration until the fallback's renewal begins. Registration states are set directly."""
    p = phone("uc-5.x", TWO | {"reg.1.server.1.address": "voip.provider.example",
                               "reg.1.server.2.failOver.reRegisterOn": "1"} | params)
    p._spawn = lambda coro: coro.close()          # no line events or subscriptions: no network here
    p.resolver._ttls["voip.provider.example"] = 30
    reg, fb = p.regs[0], p.regs[0].failback
    _switch(p, UP, UP)
    assert reg.working == 1 and not fb.holding(time.monotonic())      # booting on both: no hold
    _switch(p, DOWN, UP)
    assert reg.working == 2
    now = time.monotonic()
    if wait == "none":
        assert not fb.holding(now)
        return
    assert fb.holding(now)
    if wait is None:
        assert fb.due_at is None
        fb.renewal()
        assert fb.holding(now) == (params[MODE] == "duration")       # a renewal ends only a registration hold
    else:
        assert fb.due_at - now == pytest.approx(wait, abs=1.0)
        assert not fb.holding(fb.due_at)
    # a failover on the fallback ends any hold; the primary back at work clears it
    fb.due = False
    _switch(p, DOWN, DOWN)
    assert reg.working is None and not fb.holding(time.monotonic())
    _switch(p, UP, DOWN)
    assert reg.working == 1 and not fb.after_failover and fb.held_since is None
