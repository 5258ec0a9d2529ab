"""PoE switch drivers: power a phone's port off and on, read back, by the inventory's `switches[].driver`.

A driver is one module here exporting `connect(switch, credentials) -> PoeSwitch`,
registered by name in fleet.config.switch_drivers (labgrid's power backends are
the model: `power_set`/`power_get` per backend module). Every driver keeps the
rules the router's SNMP driver keeps:
- refusal before change: the port is read first, so an unknown port or a login
  the switch does not take is refused with nothing set;
- every set is checked and read back, and `PortState` says what the switch
  reported afterwards, never what the caller hoped.
`cycle` is the one sequence callers use: off, wait, on, each step read back.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from fleet.config import switch_drivers

if TYPE_CHECKING:   # only for annotations
    from fleet.config.inventory import Credentials, Phone, PoePort, Secrets, Site, Switch

MAX_OFF_S = 300.0


@dataclass(frozen=True)
class PortState:
    """A PSE port as the switch reports it: admin enabled (pethPsePortAdminEnable) and what it detects
    (pethPsePortDetectionStatus: "deliveringPower", "searching", "disabled", ...; "" when not read)."""
    port: str
    enabled: bool
    detection: str = ""
    at: float = 0.0         # when the switch answered

    def to_dict(self) -> dict:
        return asdict(self)


class PoeSwitch(Protocol):
    name: str

    def port_state(self, port: "PoePort") -> PortState:
        """Read the port; DeviceRefused (NoSuchName) for a port the switch does not have."""

    def set_power(self, port: "PoePort", on: bool) -> PortState:
        """Enable or disable the port's power after reading it (refused before any change when it cannot be
        read), then read it back; DeviceRefused when it reads back otherwise."""

    def close(self) -> None: ...


def connect(switch: "Switch", credentials: "Credentials") -> PoeSwitch:
    """The driver registered for the switch's `driver` name (its module imported on first use)."""
    return importlib.import_module(switch_drivers.get(switch.driver).module).connect(switch, credentials)


def cycle(driver: PoeSwitch, port: "PoePort", off_s: float, sleep: Callable[[float], None] = time.sleep,
          on_step: Callable[[str, PortState], None] | None = None) -> tuple[PortState, PortState]:
    """Power the port off, wait `off_s`, power it on; (state after off, state after on), each read back. The port
    is turned on again whatever happens after it went off (an error while waiting, an interrupt), so a phone is
    never left without power by a failed cycle."""
    if not 0 <= off_s <= MAX_OFF_S:
        raise ValueError(f"off_s {off_s}: between 0 and {MAX_OFF_S:g} seconds")
    off = driver.set_power(port, False)
    if on_step:
        on_step("off", off)
    try:
        sleep(off_s)
    finally:
        on = driver.set_power(port, True)
    if on_step:
        on_step("on", on)
    return off, on


def for_phone(site: "Site", phone: "Phone", secrets: "Secrets") -> tuple[PoeSwitch, "PoePort"]:
    """The driver of the switch that powers `phone` (its inventory `poe`), connected with the switch's
    credentials, and the phone's port. KeyError naming the phone when the inventory gives it no port."""
    if phone.poe is None:
        raise KeyError(f"phone {phone.mac} has no poe port in the inventory")
    switch = site.switch(phone.poe.switch)
    return connect(switch, secrets.credentials(switch.credentials)), phone.poe
