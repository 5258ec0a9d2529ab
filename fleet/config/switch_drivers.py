"""Switch drivers by the inventory's `switches[].driver` name: the one table that knows each one.

As fleet.config.platforms does for routers: the inventory checks a switch's
`driver` against this table when it loads, without importing any driver (the
SNMP one pulls in pysnmp), so a misspelt name is an error naming the file and
line. A new switch driver is one module in fleet/drivers/switch/ exporting
`connect(switch, credentials) -> PoeSwitch` plus one `register(...)` here (or
in a plug-in that imports this module), as labgrid's power backends are one
module each, found by name.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class SwitchDriver:
    name: str
    module: str           # importable module exporting connect(switch, credentials)
    snmp: bool = True     # reached over SNMP: the inventory's snmp_version and port 161 apply


_DRIVERS: dict[str, SwitchDriver] = {}
DRIVERS: Mapping[str, SwitchDriver] = MappingProxyType(_DRIVERS)


def register(driver: SwitchDriver) -> SwitchDriver:
    """Add (or replace) a switch driver; inventories loaded afterwards may name it."""
    _DRIVERS[driver.name] = driver
    return driver


def unregister(name: str) -> None:
    """Remove a driver registered at run time (a test's fake one)."""
    _DRIVERS.pop(name, None)


def get(name: str) -> SwitchDriver:
    """The driver registered as `name`; otherwise a ValueError that lists the known names."""
    try:
        return _DRIVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown switch driver {name!r}; known drivers: {', '.join(sorted(_DRIVERS))}") from None


def check_driver(name: str) -> str:
    return get(name).name


register(SwitchDriver("snmp-poe", "fleet.drivers.switch.snmp_poe"))
