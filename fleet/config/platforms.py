"""Router platforms by the inventory's `router.driver` name: the one table that knows each one.

Per driver name it says which module implements the driver (imported only when a
router of that platform is used, by fleet.drivers.router: the SNMP one pulls in
pysnmp), what the inventory checks for it when it loads (its WAN interface
naming rule; whether it speaks SSH, which router captures and gateway polling
run over), and how it streams a pcap capture of SIP: a tcpdump command per
capture flavour, the `platform` an inventory's `capture: {kind: router,
platform: vyos}` names (a VyOS router runs tcpdump under sudo).

The inventory checks names against this table without importing any driver, so
a misspelt driver is an error naming the file and line, and the drivers may
import the inventory's types freely. A new platform is one module in
fleet/drivers/router/ plus one `register(RouterPlatform(...))` here (or in a
plug-in that imports this module).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# -U: flush per packet (latency), -w -: pcap to stdout, -s 0: whole packets, -n: no name lookups
TCPDUMP = "exec tcpdump -U -n -s 0 -w - -i {iface} {filter}"
NO_CAPTURE_HERE = "use a mirror port into a local capture interface, or HEP from the SIP server"


def any_interface_name(name: str) -> str | None:
    """No rule beyond the inventory's own pattern (an SNMP ifDescr may be `GigabitEthernet0/0/1`)."""
    return None


def linux_interface_name(name: str) -> str | None:
    """A Linux interface name has no `/` and at most 15 characters."""
    if "/" in name or len(name) > 15:
        return f"{name!r:.70} is not a Linux interface name (at most 15 characters, no /)"
    return None


@dataclass(frozen=True)
class RouterPlatform:
    """One router platform. `captures`: capture flavour -> shell command streaming pcap on stdout, with
    {iface} and {filter} (fleet.evidence.wire.pcap.capture_command quotes both); the first flavour is the
    default. No captures: the platform cannot stream one, `no_capture` says why and what to use instead."""
    driver: str
    module: str
    ssh: bool = False
    check_interface: Callable[[str], str | None] = any_interface_name
    captures: Mapping[str, str] = field(default_factory=dict)
    no_capture: str = ""

    def capture_template(self, flavour: str | None = None) -> str:
        """The capture command template for `flavour` (None: the platform's default); ValueError naming what
        it has when it has none or not that one."""
        if not self.captures:
            raise ValueError(f"router driver {self.driver} cannot stream a capture: "
                             f"{self.no_capture or NO_CAPTURE_HERE}")
        if flavour is None:
            return next(iter(self.captures.values()))
        try:
            return self.captures[flavour]
        except KeyError:
            raise ValueError(f"router driver {self.driver} has no capture platform {flavour!r}; "
                             f"known: {', '.join(self.captures)}") from None

    @property
    def default_capture(self) -> str | None:
        """The capture flavour used where the inventory names none."""
        return next(iter(self.captures), None)


_PLATFORMS: dict[str, RouterPlatform] = {}
PLATFORMS: Mapping[str, RouterPlatform] = MappingProxyType(_PLATFORMS)   # read-only view: change it by register()


def register(platform: RouterPlatform) -> RouterPlatform:
    """Add (or replace) a router platform; inventories loaded afterwards may name it."""
    _PLATFORMS[platform.driver] = platform
    return platform


def unregister(driver: str) -> None:
    """Remove a platform registered at run time (a test's fake one)."""
    _PLATFORMS.pop(driver, None)


def get(driver: str) -> RouterPlatform:
    """The platform registered as `driver`; otherwise a ValueError that lists the known names."""
    try:
        return _PLATFORMS[driver]
    except (KeyError, TypeError):
        raise ValueError(f"unknown router driver {driver!r}; known drivers: {', '.join(sorted(_PLATFORMS))}") from None


def check_driver(driver: str) -> str:
    """`driver` if it is a registered platform; otherwise a ValueError that lists the known names."""
    return get(driver).driver


def ssh_drivers() -> list[str]:
    """The drivers that speak SSH (router captures and gateway polling run over it)."""
    return sorted(name for name, p in _PLATFORMS.items() if p.ssh)


def capture_flavours() -> list[str]:
    """Every capture flavour some platform has (what a capture's `platform` may say)."""
    return sorted({flavour for p in _PLATFORMS.values() for flavour in p.captures})


register(RouterPlatform(
    driver="linux_ssh", module="fleet.drivers.router.linux_ssh", ssh=True, check_interface=linux_interface_name,
    captures={"linux": TCPDUMP, "openwrt": TCPDUMP, "vyos": "exec sudo tcpdump -U -n -s 0 -w - -i {iface} {filter}"}))
register(RouterPlatform(
    driver="snmp", module="fleet.drivers.router.snmp",
    no_capture="SNMP runs no command on the router (and IOS Embedded Packet Capture writes to a buffer or file, "
               f"not a stream); {NO_CAPTURE_HERE}"))
