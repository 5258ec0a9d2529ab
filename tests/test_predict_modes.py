"""Predicted bounds per firmware family and failback mode (fleet.phoneconf.predict, and the verdict's use of them)."""
from __future__ import annotations

import pytest

from fleet.phoneconf import predict
from fleet.experiment.verdict import Expectation, OutageWindow, PhoneVerdict, Reached, judge_phone, predicted_bounds

S = predict.DETECTION_SLACK
UC = "uc-5.x"


def two_servers(**primary: str) -> dict[str, str]:
    """Primary and fallback with fast transaction timers (500 ms x 4 = 2 s); primary attributes as keyword args."""
    p = {"reg.1.server.1.address": "voip.provider.example", "reg.1.server.1.retryTimeOut": "500",
         "reg.1.server.1.retryMaxCount": "3", "reg.1.server.1.expires": "120", "reg.1.server.1.expires.overlap": "20",
         "reg.1.server.2.address": "10.1.0.1", "reg.1.server.2.retryTimeOut": "500", "reg.1.server.2.expires": "300",
         "reg.1.server.2.expires.overlap": "60", "reg.1.server.2.failOver.reRegisterOn": "1",
         "reg.1.server.1.registerRetry.baseTimeOut": "10", "reg.1.server.1.registerRetry.maxTimeOut": "60"}
    p.update({f"reg.1.server.1.{k.replace('__', '.')}": v for k, v in primary.items()})
    return p


def test_whole_server_precedence_not_attribute_by_attribute():
    params = {"reg.1.server.1.address": "voip.provider.example", "voIpProt.server.1.expires": "100",
              "voIpProt.server.1.retryTimeOut": "500",
              "voIpProt.server.2.address": "10.1.0.1", "voIpProt.server.2.expires": "400"}
    primary, fallback = predict.servers(params, family="sip-3.x")
    # server 1 has reg.1.server.1.address: none of voIpProt.server.1.* applies, defaults fill the rest
    assert (primary.source, primary.expires, primary.transaction_timeout) == ("reg", 3600, 32.0)
    # server 2 is configured only globally: its voIpProt.server.2.* values apply
    assert (fallback.source, fallback.address, fallback.expires) == ("voIpProt", "10.1.0.1", 400)


def test_failover_uses_the_expiry_the_server_granted():
    params = two_servers()
    configured = predict.failover_max(params, family=UC)
    granted = predict.failover_max(params, family=UC, granted=30)
    assert configured == 100 + 2.0 + S + 2.0          # refresh 120-20, primary tx, fallback's REGISTER tx
    # the grant (30) is not below the overlap (20): refresh 20 s before it, although half of it (15) is
    assert granted == 10 + 2.0 + S + 2.0
    # a grant below the overlap: refresh at half of it
    assert predict.failover_max(params, family=UC, granted=16) == 8 + 2.0 + S + 2.0
    obs = [{"t": 1.0, "server": 1, "state": "registered", "detail": "expires=20"},
           {"t": 2.0, "server": 2, "state": "registered", "detail": "expires=300"},
           {"t": 9.0, "server": 1, "state": "registered", "detail": "expires=30"}]
    assert predict.granted_expiry(obs, 1) == 30
    assert predict.granted_expiry(obs, 1, before=5.0) == 20
    assert predict.granted_expiry([{"t": 1, "server": 1, "state": "registered", "detail": ""}], 1) is None
    # a wire/HEP observation carries the grant as a field; the gateway's bindings give the time left (not a grant)
    assert predict.granted_expiry([{"t": 1, "server": 1, "state": "registered", "source": "wire", "expires": 60}]) == 60
    assert predict.granted_expiry([{"t": 1, "server": 1, "state": "registered", "source": "gateway",
                                    "expires": 3, "detail": "binding expires=3"}]) is None


def test_uc_backoff_bound_grows_with_the_outage_up_to_max_timeout():
    params = two_servers()
    tx = 2.0
    # unknown outage length: the longest wait is maxTimeOut
    assert predict.recovery_max(params, family=UC) == 60 + tx + S
    # RFC 5626 4.5: after n consecutive failures the nominal wait is min(max, base x 2^n), so after the first
    # failure of a 4 s outage it is 20 (not the base 10)
    assert predict.recovery_max(params, family=UC, outage_s=4) == 20 + tx + S
    # waits last at least half their nominal value: the 2nd failure comes >= 10 s in (next wait 40), the 3rd >= 30 s
    assert predict.recovery_max(params, family=UC, outage_s=12) == 40 + tx + S
    assert predict.recovery_max(params, family=UC, outage_s=29) == 40 + tx + S
    assert predict.recovery_max(params, family=UC, outage_s=30) == 60 + tx + S
    assert predict.recovery_max(params, family=UC, outage_s=3600) == 60 + tx + S


def test_sip3_fixed_retry_ignores_uc_timers():
    params = two_servers()
    t = predict.servers(params, family="sip-3.x")[0]
    assert not t.backoff and t.retry_interval == t.retry_max == 60.0     # the seed's "30 to 60 seconds"
    assert predict.recovery_max(params, family="sip-3.x", outage_s=5) == 60 + 2.0 + S
    # no failback modes on SIP 3.x: a mode in the file changes nothing
    assert predict.recovery_max(params | {"reg.1.server.1.failOver.failBack.mode": "duration",
                                          "reg.1.server.1.failOver.failBack.timeout": "0"}, family="sip-3.x") == 63.0


def test_registration_mode_is_not_new_requests():
    new_requests = predict.recovery_max(two_servers(), family=UC, outage_s=4)
    registration = predict.recovery_max(two_servers(failOver__failBack__mode="registration"), family=UC, outage_s=4)
    assert new_requests == 20 + 2.0 + S       # RFC 5626: base 10 x 2^1 after the first failure
    # back at the next renewal of the fallback's registration: refresh of 300 s with overlap 60
    assert registration == 240 + 2.0 + S
    # the fallback granted less: its renewal is sooner
    assert predict.recovery_max(two_servers(failOver__failBack__mode="registration"), family=UC, outage_s=4,
                                fallback_granted=100) == 40 + 2.0 + S


def test_duration_mode_waits_the_timeout_and_zero_never_fails_back():
    params = two_servers(failOver__failBack__mode="duration", failOver__failBack__timeout="600")
    assert predict.recovery_max(params, family=UC) == 600 + S
    never = predict.recovery_bound(two_servers(failOver__failBack__mode="duration", failOver__failBack__timeout="0"),
                                   family=UC)
    assert never.seconds is None and "never fails back" in never.reason


def test_dnsttl_mode_receives_the_ttl():
    params = two_servers(failOver__failBack__mode="DNSTTL")
    assert predict.recovery_max(params, family=UC, dns_ttl=300, outage_s=4) == 20 + 2.0 + S + 300
    assert predict.recovery_max(params, family=UC, dns_ttl=5, outage_s=4) == 20 + 2.0 + S + 5
    unknown = predict.recovery_bound(params, family=UC, outage_s=4)
    assert unknown.seconds is None and "TTL is unknown" in unknown.reason


def test_uc_fallback_without_reregister_gets_no_register():
    params = two_servers()
    del params["reg.1.server.2.failOver.reRegisterOn"]          # UC Software default 0
    assert predict.failover_max(params, family=UC) is None
    assert "reRegisterOn" in predict.failover_problem(params, family=UC)
    assert [t.registers for t in predict.servers(params, family=UC)] == [True, False]
    # SIP 3.x and UC Software 4.0 have no such control: they register with every configured server (R1)
    for family in ("sip-3.x", "uc-4.0"):
        assert predict.failover_problem(params, family=family) is None
        assert predict.failover_max(params, family=family) == 100 + 2.0 + S


def test_verdict_uses_granted_expiry_outage_length_and_says_why_a_bound_is_missing():
    outage = OutageWindow(start=100.0, end=104.0)
    obs = [{"t": 90.0, "server": 1, "state": "registered", "detail": "expires=30", "working_server": 1},
           {"t": 105.0, "server": 1, "state": "registered", "detail": "expires=30", "working_server": 1}]
    pred = predicted_bounds(two_servers(), UC, obs, outage)
    assert pred.failover_max_s == 10 + 2.0 + S + 2.0 and pred.recovery_max_s == 20 + 2.0 + S and not pred.notes

    never = predicted_bounds(two_servers(failOver__failBack__mode="duration", failOver__failBack__timeout="0"),
                             UC, obs, outage)
    assert never.recovery_max_s is None and never.notes[0].startswith("recovery:")
    v = PhoneVerdict(mac="m", model="VVX 410", predicted_failover_max_s=never.failover_max_s,
                     predicted_recovery_max_s=None, prediction_notes=never.notes)
    exp = Expectation("back", server=1, within=20, measure="recovery")
    judge_phone(v, 2, [exp], {"back": Reached(at={}, missing={"m": 2})}, obs, outage)
    assert not v.passed and "never fails back" in v.reasons[0]

    no_rereg = two_servers()
    del no_rereg["reg.1.server.2.failOver.reRegisterOn"]
    pred = predicted_bounds(no_rereg, UC, obs, outage)
    assert pred.failover_max_s is None and "reRegisterOn" in pred.notes[0]


@pytest.mark.parametrize("family,expect_backoff", [("sip-2.x", False), ("sip-3.x", False), ("uc-4.0", False), ("uc-5.x", True)])
def test_retry_model_per_family(family, expect_backoff):
    assert predict.retry_model(family).backoff is expect_backoff


def test_dns_ttl_read_from_the_sites_dns_server():
    """The DNSTTL bound's TTL comes from the site's DNS server (a real UDP query); unknown is None, never a guess.
    The provider probe resolves names with the same query (drivers.probe.resolve)."""
    import asyncio
    import socket

    from fleet.base.dns import ttl_of
    from fleet.drivers.probe import resolve
    from hil.dns_server import DnsServer

    async def run():
        srv = await DnsServer.start("127.46.9.53", 0, {"voip.provider.example": "127.46.9.10"}, ttl=42)
        port = srv.transport.get_extra_info("sockname")[1]
        try:
            return (await asyncio.to_thread(ttl_of, "voip.provider.example", "127.46.9.53", port),
                    await asyncio.to_thread(ttl_of, "other.example", "127.46.9.53", port),
                    await resolve("voip.provider.example", ("127.46.9.53", port)),
                    await resolve("other.example", ("127.46.9.53", port)))
        finally:
            srv.stop()

    assert asyncio.run(run()) == (42, None, "127.46.9.10", None)
    assert ttl_of("voip.provider.example", "127.46.9.54", 9, timeout=0.3) is None     # nobody answers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:                  # answers, with garbage
        garbage.bind(("127.46.9.55", 0))

        def answer_garbage():
            data, addr = garbage.recvfrom(512)
            garbage.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x05junk", addr)

        import threading
        t = threading.Thread(target=answer_garbage, daemon=True)
        t.start()
        assert ttl_of("voip.provider.example", "127.46.9.55", garbage.getsockname()[1], timeout=2) is None
        t.join(2)


def test_experiment_reads_the_dnsttl_ttl_once_per_name(tmp_path):
    """The runner asks the site's DNS for the primary's TTL the first time a DNSTTL phone needs it, then keeps it
    (the server stopped, the same name still has its TTL); a phone not in DNSTTL mode asks nothing."""
    import asyncio

    import yaml

    from fleet.config import inventory
    from fleet.experiment.runner import ExperimentRunner
    from fleet.experiment.playbook import ExperimentPlaybook
    from hil.dns_server import DnsServer

    async def start():
        return await DnsServer.start("127.46.9.57", 0, {"voip.provider.example": "127.46.9.10"}, ttl=42)

    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(start())
    port = srv.transport.get_extra_info("sockname")[1]
    doc = {"name": "t", "firmware_family": "uc-5.x", "sites": [{
        "name": "hq", "gateway": "127.46.9.1", "dns": f"127.46.9.57:{port}", "boot_server": {"url": "http://127.0.0.1:9/"},
        "phones": [{"mac": "0004f2000001", "model": "VVX 410", "address": "127.46.9.20", "credentials": "admin"}]}]}
    path = tmp_path / "inv.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    pb = ExperimentPlaybook.model_validate({"kind": "experiment", "name": "x", "site": "hq",
                                            "steps": [{"name": "w", "wait": 1}]})
    runner = ExperimentRunner(pb, inventory.load(path), store=None)
    dnsttl = two_servers(failOver__failBack__mode="DNSTTL")
    try:
        assert runner._dns_ttl(two_servers(), UC) is None       # not DNSTTL: no question asked
        thread = loop.run_in_executor(None, runner._dns_ttl, dnsttl, UC)
        assert loop.run_until_complete(thread) == 42
    finally:
        srv.stop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert runner._dns_ttl(dnsttl, UC) == 42                    # kept: the server is gone
    assert ExperimentRunner(pb, inventory.load(path), store=None)._dns_ttl(dnsttl, UC) is None   # a new run asks again


def test_fallbacks_a_phone_may_use_only_on_failure_are_uc_reregister_on_ones():
    """What rollout verification may find silent while server 1 works (fleet.rollout.policy.registered)."""
    params = two_servers()
    assert predict.fallbacks_on_failure(params, family=UC) == [2]
    del params["reg.1.server.2.failOver.reRegisterOn"]
    assert predict.fallbacks_on_failure(params, family=UC) == []       # never registers there at all
    assert predict.fallbacks_on_failure(two_servers(), family="sip-3.x") == []   # registers with every server (R1)
