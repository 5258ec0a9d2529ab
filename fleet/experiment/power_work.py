"""An experiment's `power` step on the worker: the selected phones' PoE ports off together, a wait, on again.

All ports go off before the wait and all come back after it, as a site's power
blip would; every port is turned on again whatever happened after it went off
(an error on another port, the wait interrupted), so no phone is left
unpowered by a failed step. Each switch is read before it is set (refusal
before change) and read back after (fleet.drivers.switch).
"""
from __future__ import annotations

import time

from fleet.base.steps import step
from fleet.config.inventory import Phone, Secrets, Site
from fleet.drivers import switch as switches
from fleet.drivers.errors import DriverError
from fleet.worker.context import context
from fleet.worker.errors import TaskFailed, failure_text


def _ports(site: Site, macs: list[str], secrets: Secrets) -> list[tuple[Phone, switches.PoeSwitch]]:
    by_mac = {p.mac: p for p in site.phones}
    out = []
    for mac in macs:
        phone = by_mac.get(mac)
        if phone is None or phone.poe is None:
            raise TaskFailed(f"phone {mac} is not a phone of site {site.name} with a poe port")
        driver, _ = switches.for_phone(site, phone, secrets)
        out.append((phone, driver))
    return out


@step("power cycle", args=("macs", "off_s"))
def cycle(site_name: str, macs: list[str], off_s: float, sleep=time.sleep) -> dict:
    """{"off_at", "on_at", "ports": {mac: {"off": PortState, "on": PortState}}}: what each switch read back."""
    inv, secrets = context()
    try:
        ports = _ports(inv.site(site_name), macs, secrets)
    except (KeyError, DriverError) as exc:
        raise TaskFailed(failure_text(exc)) from None
    states: dict[str, dict] = {}
    turned_off: list[tuple[Phone, switches.PoeSwitch]] = []
    errors: list[str] = []
    try:
        for phone, driver in ports:
            states[phone.mac] = {"off": driver.set_power(phone.poe, False).to_dict()}
            turned_off.append((phone, driver))
        off_at = time.time()
        sleep(off_s)
    except DriverError as exc:
        errors.append(failure_text(exc))
        off_at = time.time()
    finally:
        for phone, driver in turned_off:
            try:
                states[phone.mac]["on"] = driver.set_power(phone.poe, True).to_dict()
            except DriverError as exc:
                errors.append(failure_text(exc))
    if errors:
        raise TaskFailed(f"power cycle: {'; '.join(errors)[:500]}")
    return {"off_at": off_at, "on_at": time.time(), "ports": states}
