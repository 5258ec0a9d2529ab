"""A router platform and an evidence source added as plug-ins, editing no existing module.

Each is registered at run time through its table's public `register` (fleet.config.platforms,
fleet.config.source_kinds) with a module made here; an inventory naming them is checked by the tables' rules
when it loads, and a real collector (its own thread, a real Redis) connects the fake router, runs its capture
command, and starts the fake source: what both deliver reaches the store as the phone's per-server state.
"""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from conftest import free_port, wait_until
from fleet.config import platforms, source_kinds
from fleet.config.inventory import Inventory, Secrets, load
from fleet.config.platforms import RouterPlatform
from fleet.config.source_kinds import SourceKind
from fleet.drivers import router as routers
from fleet.evidence.collector import SiteCollector
from fleet.evidence.sources.base import SourceContext, start_source
from fleet.phoneconf import firmware
from fleet.state.observe import REGISTERED, Observation
from fleet.state.sites import register_site
from fleet.state.store import Store
from soundpoint import families
from soundpoint.yamlfile import FileError
from test_wire_evidence import eth, pcap, register, response

FAKE_DRIVER, FAKE_KIND = "fakeos", "fake"
MAC, USER = "0004f2c0de01", "1001"
PHONE = ("192.168.10.21", 5060)
PROVIDER = ("203.0.113.10", 5060)
GATEWAY = "192.168.10.1"


# ---------------------------------------------------------------- the plug-ins, as a plug-in's author writes them

class FakeStream:
    """A capture command's stdout: the router's pcap once, then nothing more (the capture goes on)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, timeout: float) -> bytes | None:
        data, self.data = self.data, b""
        if not data:
            time.sleep(min(timeout, 0.05))
        return data

    def ended(self) -> str:
        return "ended"

    def close(self) -> None:
        pass


class FakeRouter:
    """A router of the fake platform: it speaks SSH (run, stream) as far as the sources need."""
    name, modes, has_deadman = FAKE_DRIVER, ("link-down",), False

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def stream(self, command: str, what: str = "") -> FakeStream:
        self.module.commands.append(command)
        return FakeStream(self.module.pcap)

    def run(self, command: str, check: bool = True, what: str = "") -> str:
        self.module.commands.append(command)
        return ""

    def close(self) -> None:
        pass


def fake_interface_name(name: str) -> str | None:
    return None if name.startswith("fk") else f"{name!r} is not a fakeos interface (they are called fk0, fk1, ...)"


@pytest.fixture
def fake_platform(monkeypatch):
    """The fake router platform: its driver module and its entry in the platform table."""
    module = types.ModuleType("fake_router_platform")
    module.MODES = ("link-down",)
    module.connected, module.commands, module.pcap = [], [], b""

    def connect(router, credentials):
        module.connected.append((router.driver, credentials.username))
        return FakeRouter(module)

    module.connect = connect
    monkeypatch.setitem(sys.modules, module.__name__, module)
    platforms.register(RouterPlatform(FAKE_DRIVER, module.__name__, ssh=True, check_interface=fake_interface_name,
                                      captures={"fakecap": "exec fakedump -i {iface} -F {filter}"}))
    yield module
    platforms.unregister(FAKE_DRIVER)


class FakeSource:
    """An evidence source that reports every phone of its site registered at the gateway's server entry, once."""

    def __init__(self, ctx: SourceContext, capture) -> None:
        self.ctx, self.capture, self.stopped = ctx, capture, False

    def deliver(self) -> None:
        gw = [t for t in self.ctx.targets.wire if t.address[0] == GATEWAY]
        self.ctx.sink.observe([Observation(mac=t.mac, t=time.time(), source=FAKE_KIND, reg=t.reg, server=t.server,
                                           state=REGISTERED, address=f"{GATEWAY}:5060", detail=self.capture.interface)
                               for t in gw])

    def health(self) -> dict:
        return {"source": FAKE_KIND, "running": not self.stopped, "error": "", "since": None, "foreign": {}}

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_source(monkeypatch):
    """The fake evidence source: its module (with `start`) and its entry in the kind table."""
    module = types.ModuleType("fake_evidence_source")
    module.started = []

    async def start(ctx: SourceContext, capture) -> FakeSource:
        source = FakeSource(ctx, capture)
        module.started.append(source)
        source.deliver()
        return source

    module.start = start
    monkeypatch.setitem(sys.modules, module.__name__, module)
    source_kinds.register(SourceKind(FAKE_KIND, module.__name__, word="interface", takes=("interface",),
                                     needs=("interface",), sees="", text_form="fake NAME"))
    yield module
    source_kinds.unregister(FAKE_KIND)


# ---------------------------------------------------------------- an inventory naming them

def _inventory_text(driver: str = FAKE_DRIVER, wan: str = "fk0", capture: str = "[router lan0, fake port7]") -> str:
    return f"""name: plugins
firmware_family: uc-5.x
secrets_file: secrets.yml
sites:
  - name: plug
    gateway: {GATEWAY}
    boot_server: {{url: "file:///nonexistent"}}
    collector: {{syslog: "127.0.0.1:{free_port()}", events: "127.0.0.1:{free_port()}"}}
    router: {{driver: {driver}, address: 127.0.0.1, credentials: r, wan_interface: {wan}}}
    capture: {capture}
    params: {{reg.1.server.1.address: "{PROVIDER[0]}", reg.1.server.2.address: "{GATEWAY}"}}
    phones:
      - {{mac: "{MAC}", model: VVX 410, address: {PHONE[0]}, credentials: admin, params: {{reg.1.address: "{USER}"}}}}
"""


def _load(tmp_path: Path, text: str) -> Inventory:
    (tmp_path / "secrets.yml").write_text(yaml.safe_dump({"r": {"username": "fleet", "password": "router-pw"},
                                                          "admin": {"username": "Polycom", "password": "456"}}))
    (tmp_path / "inv.yml").write_text(text)
    return load(tmp_path / "inv.yml")


def test_an_inventory_naming_a_platform_or_source_nobody_registered_is_refused(tmp_path):
    with pytest.raises(FileError, match="unknown router driver 'fakeos'; known drivers: linux_ssh, snmp"):
        _load(tmp_path, _inventory_text(capture="[router lan0]"))
    with pytest.raises(FileError, match="is not one of: router"):
        _load(tmp_path, _inventory_text(driver="linux_ssh", wan="eth0"))


def test_a_registered_platform_is_checked_by_its_own_rules(tmp_path, fake_platform, fake_source):
    site = _load(tmp_path, _inventory_text()).sites[0]
    assert site.router.driver == FAKE_DRIVER and [c.kind for c in site.capture] == ["router", FAKE_KIND]
    assert routers.supported_modes(FAKE_DRIVER) == ("link-down",)          # its module, imported by name
    with pytest.raises(FileError, match=r"inv.yml:\d+: .*'eth0' is not a fakeos interface"):
        _load(tmp_path, _inventory_text(wan="eth0"))
    with pytest.raises(FileError, match="has no capture platform 'vyos'; known: fakecap"):
        _load(tmp_path, _inventory_text(capture="{kind: router, platform: vyos}"))
    assert _load(tmp_path, _inventory_text(capture="{kind: router, platform: fakecap}")).sites[0].capture[0].platform


def test_a_registered_source_is_checked_by_its_kind(tmp_path, fake_platform, fake_source):
    with pytest.raises(FileError, match=r"expected router \[IFACE\] \| interface NAME \| hep HOST:PORT \| fake NAME"):
        _load(tmp_path, _inventory_text(capture="fake"))
    with pytest.raises(FileError, match="belong to a hep capture, not to fake"):
        _load(tmp_path, _inventory_text(capture="{kind: fake, interface: port7, listen: '10.0.0.1:9060'}"))
    assert start_source(FAKE_KIND) is fake_source.start


def test_the_collector_connects_the_fake_router_and_starts_the_fake_source(tmp_path, redis_url, fake_platform,
                                                                          fake_source):
    """Both plug-ins through a real collector: the router capture runs the platform's command on the fake
    router and its pcap becomes server 1's state; the fake source's observations become server 2's."""
    inv = _load(tmp_path, _inventory_text())
    site = inv.sites[0]
    req = register(USER, PHONE, PROVIDER, expires=600)
    ok = response(req, 200, contacts=[f"<sip:{USER}@{PHONE[0]}:{PHONE[1]}>;expires=600"], expires=600)
    now = time.time()
    fake_platform.pcap = pcap([(now, eth(PHONE, PROVIDER, req)), (now + 0.05, eth(PROVIDER, PHONE, ok))])
    store = Store(redis_url)
    store.forget_phones([MAC])
    register_site(store, inv, site)
    c = SiteCollector(site, store, Secrets(inv), inv)
    c.start()
    try:
        state = wait_until(lambda: (lambda s: s if {1, 2} <= set(s.servers) else None)(store.phone_state(MAC)), 15,
                           "both plug-ins' observations in the store", state=lambda: c.evidence_report())
        assert (state.servers[1]["state"], state.servers[1]["source"]) == (REGISTERED, "wire"), state.to_dict()
        assert (state.servers[2]["state"], state.servers[2]["source"]) == (REGISTERED, FAKE_KIND), state.to_dict()
        assert fake_platform.connected == [(FAKE_DRIVER, "fleet")]
        assert fake_platform.commands[0].startswith("exec fakedump -i lan0 -F '(udp and (port 53 or port 5060)) ")
        assert [s.capture.interface for s in fake_source.started] == ["port7"]
        _, health = c.evidence_report()
        assert [h["source"] for h in health] == ["router capture", FAKE_KIND] and not c.source_errors, health
    finally:
        c.stop()
    assert all(s.stopped for s in fake_source.started)


# ---------------------------------------------------------------- the tables themselves

def test_the_platform_table_lists_and_refuses_by_name():
    assert platforms.check_driver("linux_ssh") == "linux_ssh"
    assert platforms.ssh_drivers() == ["linux_ssh"]
    assert {"linux", "openwrt", "vyos"} <= set(platforms.capture_flavours())
    assert platforms.get("linux_ssh").default_capture == "linux" and platforms.get("snmp").default_capture is None
    assert platforms.get("linux_ssh").check_interface("GigabitEthernet0/0/1")
    assert platforms.get("snmp").check_interface("GigabitEthernet0/0/1") is None
    for name in ("ssh_base", "__init__", "linux_ssh.connect", "../snmp", None):
        with pytest.raises(ValueError, match="known drivers: linux_ssh, snmp"):
            platforms.get(name)
    with pytest.raises(TypeError):
        platforms.PLATFORMS["x"] = platforms.get("snmp")            # changed only through register()


def test_the_source_kind_table_names_each_module_and_what_it_sees():
    assert source_kinds.capture_forms() == "router [IFACE] | interface NAME | hep HOST:PORT"
    assert {k: (v.module.rsplit(".", 1)[1], v.sees, v.router_ssh) for k, v in source_kinds.KINDS.items()} == {
        "router": ("router_capture", "wire", True), "interface": ("local_capture", "wire", False),
        "hep": ("hep_source", "hep", False), "gateway": ("gateway_poller", "", True)}
    for kind in source_kinds.KINDS:
        assert callable(start_source(kind))
    with pytest.raises(ValueError, match="is not one of: router"):
        start_source("tap")


@pytest.mark.parametrize("family, version, rest, polling", [
    ("uc-5.x", None, True, False), ("uc-5.x", "5.4.0", True, False), ("uc-5.x", "5.3.1", False, True),
    ("sip-3.x", None, False, True), ("uc-4.0", "4.0.15", False, True)])
def test_which_interface_fleet_uses_is_a_function_of_family_and_version(family, version, rest, polling):
    fam = families.get(family)
    assert (firmware.uses_rest(fam, version), firmware.uses_state_polling(fam, version)) == (rest, polling)
