"""A rollout's last resort for a hung phone: power-cycle its PoE port (strategy.power_cycle_fallback, off by default).

Operators power-cycle a phone that ignores check-sync, REST and its web UI; a
rollout configured to does the same, and only then. The fallback is planned per
phone (it needs a `poe` port in the inventory; a phone without one is named in
the plan's warnings), and at push time it takes two things in turn:
- past the call check: a call check that got no answer defers the phone as
  always, unless a read-only identity request gets no answer either: a phone that
  answers nothing cannot be protected as in a call, and is treated as hung;
- instead of the reboot: when the phone's reboot (its method and its fallback)
  gets no answer, its port goes off for `power_off_s` and on again, each set read
  back (fleet.drivers.switch.cycle), and verification follows as for any reboot.
A refusal by the switch (a wrong login, an unknown port) happens before anything
is set and fails the phone with the reason.
"""
from __future__ import annotations

import contextlib

from fleet.config.inventory import Phone, Secrets, Site
from fleet.drivers import switch as switches
from fleet.drivers.errors import DriverError
from fleet.phones import PhoneControl
from fleet.rollout import policy
from fleet.rollout.playbook import Strategy

POWER_CYCLE = policy.POWER_CYCLE     # the reboot method's name in reboot_tried and reports
NO_ANSWER = ("timeout", "refused")   # Identity problems that mean nothing answered (refused: no connection at all)


def planned(strategy: Strategy, phone: Phone) -> tuple[float, list[str]]:
    """(seconds the phone's port stays off when the fallback strikes, 0 for none; the plan's warning if any)."""
    if not strategy.power_cycle_fallback:
        return 0.0, []
    if phone.poe is None:
        return 0.0, ["strategy.power_cycle_fallback: the inventory gives this phone no poe port, so a hung phone is "
                     "deferred or fails as without the fallback"]
    return strategy.power_off_s, []


def answers_nothing(control: PhoneControl) -> str:
    """Why the phone counts as answering nothing (its identity request got no answer), or "" when it answered
    anything at all (then a failed call check defers it as usual)."""
    found = control.identify()
    return found.describe() if found.problem in NO_ANSWER else ""


@contextlib.contextmanager
def _port_of(site: Site, phone: Phone, secrets: Secrets, what: str):
    """The phone's switch driver and port for one piece of work, the driver closed after it; every switch error
    comes out as a plain DriverError saying `what` was refused (never retried: the reboot claim is spent)."""
    try:
        driver, port = switches.for_phone(site, phone, secrets)
        try:
            yield driver, port
        finally:
            driver.close()
    except DriverError as exc:
        raise DriverError(exc.device, f"{what} refused: {exc.message}") from None
    except KeyError as exc:
        raise DriverError(f"phone {phone.mac}", f"{what}: {exc.args[0]}") from None


def power_cycle(site: Site, phone: Phone, secrets: Secrets, off_s: float, log) -> str:
    """Cycle the phone's port; `log(kind, **fields)` records each read-back state. Returns how, for reports.
    Every switch error comes out as a plain DriverError (never retried: the reboot claim is spent)."""
    with _port_of(site, phone, secrets, "power cycle") as (driver, port):
        off, on = switches.cycle(driver, port, off_s,
                                 on_step=lambda what, st: log(f"power-{what}", port=st.port, enabled=st.enabled,
                                                              detection=st.detection, at=st.at))
    return (f"power cycle of {phone.poe.switch} port {port.port} ({off_s:g} s off; read back off: "
            f"{off.detection}, on: {on.detection})")


def ensure_on(site: Site, phone: Phone, secrets: Secrets, log) -> bool:
    """After a task that announced a power cycle was lost: the port on, whatever state the lost task left it in.
    True when it had to be turned on (logged as `power-on`, with what the switch read back)."""
    with _port_of(site, phone, secrets, "power on after a lost task") as (driver, port):
        if driver.port_state(port).enabled:
            return False
        st = driver.set_power(port, True)
    log("power-on", port=st.port, enabled=st.enabled, detection=st.detection, at=st.at, after="a lost task")
    return True
