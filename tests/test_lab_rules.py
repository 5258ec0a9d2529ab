"""The virtual lab obeys R1-R5 and R7, driven only over its network interfaces (SIP, HTTP, FTP, SSH, DNS)."""
from __future__ import annotations

import os
import time

import pytest

from conftest import lab_spec
from soundpoint.deadline import poll_until
from fleet.config import inventory
from fleet.drivers import router as routers
from fleet.drivers.control.rest import RestPhone
from fleet.drivers.control.sip_notify import check_sync_blocking
from fleet.drivers.errors import HostKeyUnknown
from fleet.drivers.router import Outage, WanState

pytestmark = pytest.mark.slow
SRV = {"expires": 10, "overlap": 5, "retry_timeout_ms": 400, "retry_max_count": 3}


@pytest.fixture(scope="module")
def std(lab_factory):
    return lab_factory(lab_spec("std", phones=3))


@pytest.fixture(scope="module")
def r5(lab_factory):
    return lab_factory(lab_spec("r5", phones=2, boot_protocol="ftp", models=["VVX 410"], servers=[
        {"address": "provider", **SRV}, {"address": "gateway", "register": 0, **SRV}]))


def _inv(lab):
    return inventory.load(lab.inventory)


def _router(lab):
    inv = _inv(lab)
    site = inv.sites[0]
    return routers.connect(site.router, inventory.Secrets(inv).credentials(site.router.credentials))


def _users(lab):
    return {p["registrations"][0]["user"] for p in lab.status()["phones"]}


def _wait(pred, timeout, step=0.1):
    """The first truthy value of `pred`, or its falsy one at the deadline (the caller asserts on it)."""
    return poll_until(pred, timeout, step)


def _working(lab):
    return {p["mac"]: p["registrations"][0]["working_server"] for p in lab.status()["phones"]}


def test_r1_r2_register_everywhere_subscribe_only_to_primary(std):
    st = std.status()
    users = _users(std)
    provider = st["provider"]["requests"]
    gateway = st["sites"][0]["gateway"]["requests"]
    for u in users:
        assert any(r["method"] == "REGISTER" and r["user"] == u and r["authenticated"] for r in provider)
        assert any(r["method"] == "REGISTER" and r["user"] == u and r["authenticated"] for r in gateway)
        assert any(r["method"] == "SUBSCRIBE" and r["user"] == u for r in provider)
    assert not [r for r in gateway if r["method"] == "SUBSCRIBE"]
    assert set(_working(std).values()) == {1}
    # the provider was reached only through the router: its requests come from the router's WAN address
    assert {r["source"].split(":")[0] for r in provider} == {f"127.{std.net + 40}.1.1"}   # hil.lab's plan


def _oid(name: str) -> str:
    return f"test-{name}-{os.getpid()}"


def _spec(mode: str, name: str, max_duration: int = 120) -> Outage:
    return Outage(id=_oid(name), mode=mode, max_duration=max_duration)


def test_r3_r4_cut_moves_to_gateway_at_next_refresh_and_back_within_retry_interval(std):
    drv = _router(std)
    mac = next(iter(_working(std)))
    try:
        t_cut = time.time()
        drv.cut(_spec("link-down", "r3r4"))
        assert drv.wan_state().link_up is False
        moved = _wait(lambda: set(_working(std).values()) == {2}, 6 + 1.6 + 3)
        assert moved, _working(std)
        ev = [e for e in std.status()["ground_truth"]["phones"][mac]["events"]
              if e["kind"] == "working_server" and e["t"] > t_cut]
        assert ev and ev[0]["data"]["server"] == 2 and ev[0]["t"] - t_cut <= 6 + 1.6 + 0.5
        # a call placed now goes to the gateway (REST dial on the VVX)
        inv = _inv(std)
        vvx = next(p for p in inv.sites[0].phones if p.family.rest)
        since = time.time()
        RestPhone(vvx, inventory.Secrets(inv).credentials(vvx.credentials)).dial("2000")
        invites = _wait(lambda: [r for r in std.status(since)["sites"][0]["gateway"]["requests"] if r["method"] == "INVITE"], 5)
        assert invites
        assert not [r for r in std.status(since)["provider"]["requests"] if r["method"] == "INVITE"]
    finally:
        t_restore = time.time()
        drv.restore(_spec("link-down", "r3r4"))
        drv.close()
    back = _wait(lambda: set(_working(std).values()) == {1}, 3 + 1.6 + 2)
    assert back, _working(std)
    ev = [e for e in std.status()["ground_truth"]["phones"][mac]["events"]
          if e["kind"] == "working_server" and e["t"] > t_restore]
    assert ev[0]["data"]["server"] == 1 and ev[0]["t"] - t_restore <= 3 + 1.6 + 0.5


def test_r7_provider_name_that_stops_resolving_is_a_down_server(std):
    drv = _router(std)
    try:
        drv.cut(_spec("dns-fail", "r7"))
        assert drv.wan_state(_oid("r7")).dns_blocked is True
        assert _wait(lambda: set(_working(std).values()) == {2}, 6 + 1 + 2 + 3)
        truth = std.status()["ground_truth"]["phones"]
        reasons = {e["data"].get("reason") for m in truth for e in truth[m]["events"]
                   if e["kind"] == "server_state" and e["data"]["server"] == 1 and e["data"]["state"] == "unregistered"}
        assert "dns" in reasons
    finally:
        drv.restore(_spec("dns-fail", "r7"))
        drv.close()
    assert _wait(lambda: set(_working(std).values()) == {1}, 10)


def test_deadman_switch_on_the_router_restores_by_itself(std):
    drv = _router(std)
    try:
        cut = drv.cut(_spec("link-down", "deadman", max_duration=2))
        assert cut.outcome == "cut" and "armed" in cut.deadman
        assert drv.wan_state().link_up is False
        assert _wait(lambda: drv.wan_state().link_up, 5, step=0.5)
        # the router says who restored it, and a late restore from the controller is a no-op
        assert drv.wan_state(_oid("deadman")).outage == "restored by deadman"
        assert drv.restore(_spec("link-down", "deadman", max_duration=2)).outcome == "already-restored"
    finally:
        drv.restore(_spec("link-down", "deadman", max_duration=2))
        drv.close()


def test_unknown_host_key_is_refused_unless_accepted_explicitly(std, tmp_path):
    inv = _inv(std)
    site = inv.sites[0]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    creds = inventory.Secrets(inv).credentials(site.router.credentials)
    with pytest.raises(HostKeyUnknown):
        routers.connect(site.router.model_copy(update={"known_hosts": str(empty)}), creds)
    drv = routers.connect(site.router.model_copy(update={"known_hosts": str(empty), "accept_new_host_key": True}), creds)
    assert drv.wan_state().link_up is True
    drv.close()


def test_check_sync_notify_reboots_the_phone_which_registers_again(std):
    inv = _inv(std)
    phone = inv.sites[0].phones[0]
    before = next(p for p in std.status()["phones"] if p["mac"] == phone.mac)["boot_count"]
    assert check_sync_blocking(phone) == 200
    def rebooted():
        p = next(p for p in std.status()["phones"] if p["mac"] == phone.mac)
        return p["boot_count"] == before + 1 and p["registrations"][0]["working_server"] == 1
    assert _wait(rebooted, 10)


def test_r5_register0_server_gets_no_register_but_takes_the_call_when_the_primary_is_down(r5):
    gateway = r5.status()["sites"][0]["gateway"]["requests"]
    assert not [r for r in gateway if r["method"] == "REGISTER"]
    assert all(r["registrations"][0]["servers"][1]["state"] == "not-registering" for r in r5.status()["phones"])
    # provisioned over FTP
    assert all(p["boot_count"] == 1 and not p["boot_errors"] for p in r5.status()["phones"])
    drv = _router(r5)
    try:
        drv.cut(_spec("link-down", "r5"))
        assert _wait(lambda: set(_working(r5).values()) == {None}, 10)
        inv = _inv(r5)
        phone = inv.sites[0].phones[0]
        since = time.time()
        RestPhone(phone, inventory.Secrets(inv).credentials(phone.credentials)).dial("2000")
        invites = _wait(lambda: [r for r in r5.status(since)["sites"][0]["gateway"]["requests"] if r["method"] == "INVITE"], 5)
        assert invites
    finally:
        drv.restore(_spec("link-down", "r5"))
        drv.close()
    assert _wait(lambda: set(_working(r5).values()) == {1}, 10)


def test_phone_uploads_its_log_to_the_boot_server(r5):
    boot = r5.state / "boot-hq"
    logs = _wait(lambda: list(boot.glob("*-app.log")), 8, step=0.5)
    assert logs and "reg.1.server.1" in logs[0].read_text()


@pytest.mark.parametrize("version,secret", [("2c", "router_snmp_v2c"), ("3", "router_snmp_v3")])
def test_snmp_driver_cuts_and_restores_with_checked_sets(std, version, secret):
    inv = _inv(std)
    site = inv.sites[0]
    snmp = site.router.model_copy(update={"driver": "snmp", "port": 1161, "snmp_version": version,
                                          "allow_without_deadman": True, "timeout": 3})
    creds = inventory.Secrets(inv).credentials(secret)
    drv = routers.connect(snmp, creds)
    assert drv.if_index == 2
    try:
        drv.cut(_spec("link-down", f"snmp{version}"))
        assert drv.wan_state() == WanState(link_up=False, oper_up=False)
        assert std.status()["sites"][0]["router"]["wan_state"]["admin_up"] is False
    finally:
        drv.restore(_spec("link-down", f"snmp{version}"))
    assert drv.wan_state().link_up is True
    assert std.status()["sites"][0]["router"]["wan_state"]["admin_up"] is True


def test_snmp_set_refused_by_the_agent_is_an_error_not_a_success(std):
    from fleet.drivers.errors import DeviceRefused, DeviceTimeout
    from fleet.drivers.router.snmp import SnmpRouter

    inv = _inv(std)
    site = inv.sites[0]
    snmp = site.router.model_copy(update={"driver": "snmp", "port": 1161, "snmp_version": "2c", "timeout": 3})
    drv = SnmpRouter(snmp, inventory.Secrets(inv).credentials("router_snmp_v2c"))
    with pytest.raises(DeviceRefused, match="wrongValue"):
        drv._set_admin(3)
    with pytest.raises(DeviceRefused, match="dead-man"):
        drv.cut(_spec("link-down", "snmp-refused", max_duration=60))
    assert std.status()["sites"][0]["router"]["wan_state"]["admin_up"] is True
    with pytest.raises(DeviceTimeout):
        SnmpRouter(snmp, inventory.Credentials(password="wrong-community"))
