"""The snmp-poe driver against every switch answer of the conformance corpus, one layer faked (the SNMP session),
and the power cycle's promise: a port turned off is turned on again whatever happens in between."""
from __future__ import annotations

import pytest

from fleet.config.inventory import Credentials, PoePort, Switch
from fleet.drivers import switch as switches
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, MalformedAnswer
from fleet.drivers.snmp_session import NoSuchName
from fleet.drivers.switch import snmp_poe
from soundpoint import conformance

PORT = PoePort(switch="poe1", port="1.12")
SWITCH = Switch(name="poe1", address="127.0.0.9", credentials="sw", snmp_version="2c")


class FakeSession:
    """Answers GETs from a table of OID -> value (an int, or an exception to raise); records SETs."""

    def __init__(self, answers: dict, sticky: bool = False) -> None:
        self.answers, self.sets, self.sticky = dict(answers), [], sticky

    def get_int(self, oid: str) -> int:
        value = self.answers.get(oid, NoSuchName("switch", f"get {oid}: NoSuchInstance"))
        if isinstance(value, Exception):
            raise value
        return value

    def set_int(self, oid: str, value: int) -> float:
        self.sets.append((oid, value))
        if not self.sticky:
            self.answers[oid] = value
        return 1.0


def _driver(answers: dict, sticky: bool = False) -> snmp_poe.SnmpPoeSwitch:
    drv = snmp_poe.SnmpPoeSwitch(SWITCH, Credentials(password="c"))
    drv.session = FakeSession(answers, sticky)
    return drv


def _answer(entry: conformance.Entry):
    """An entry's answer as the SNMP session hands it on: an integer, or the error a missing/absent answer is."""
    if entry.body == "noSuchInstance":
        return NoSuchName("switch", "get: NoSuchInstance")
    if entry.body == "":
        return DeviceTimeout("switch", "No SNMP response received before timeout")
    return int(entry.body)


def test_every_switch_entry_is_read_as_its_source_says():
    entries = {e.id: e for e in conformance.select("switch")}
    assert len(entries) >= 5
    admin = lambda e: {f"{snmp_poe.ADMIN_ENABLE}.1.12": _answer(e), f"{snmp_poe.DETECTION_STATUS}.1.12": 3}  # noqa: E731
    assert _driver(admin(entries["switch-peth-admin-enable-true"])).port_state(PORT).enabled is True
    assert _driver(admin(entries["switch-peth-admin-enable-false"])).port_state(PORT).enabled is False
    detection = entries["switch-peth-detection-status"]
    assert detection.request["path"].startswith(snmp_poe.DETECTION_STATUS + ".")
    assert _driver({f"{snmp_poe.ADMIN_ENABLE}.1.12": 1, f"{snmp_poe.DETECTION_STATUS}.1.12": _answer(detection)}
                   ).port_state(PORT).detection == "deliveringPower"
    for refused, error in (("switch-peth-unknown-port", NoSuchName), ("switch-snmp-wrong-community", DeviceTimeout)):
        drv = _driver(admin(entries[refused]))
        with pytest.raises(error):
            drv.set_power(PORT, False)
        assert drv.session.sets == [], "refused before any SET"
    for e in entries.values():
        assert e.request["path"].startswith(snmp_poe.PETH_PSE_PORT_ENTRY + "."), e.id


def test_a_detection_status_the_rfc_does_not_define_is_reported_by_number_not_guessed():
    drv = _driver({f"{snmp_poe.ADMIN_ENABLE}.1.12": 1, f"{snmp_poe.DETECTION_STATUS}.1.12": 8})
    assert drv.port_state(PORT).detection == "unknown(8)"


def test_an_admin_value_outside_truthvalue_is_malformed_and_nothing_is_set():
    drv = _driver({f"{snmp_poe.ADMIN_ENABLE}.1.12": 7, f"{snmp_poe.DETECTION_STATUS}.1.12": 3})
    with pytest.raises(MalformedAnswer, match="not true\\(1\\) or false\\(2\\)"):
        drv.set_power(PORT, True)
    assert drv.session.sets == []


def test_a_set_the_switch_did_not_apply_is_refused_by_the_read_back():
    drv = _driver({f"{snmp_poe.ADMIN_ENABLE}.1.12": 1, f"{snmp_poe.DETECTION_STATUS}.1.12": 3}, sticky=True)
    with pytest.raises(DeviceRefused, match="reads back enabled"):
        drv.set_power(PORT, False)
    assert drv.session.sets == [(f"{snmp_poe.ADMIN_ENABLE}.1.12", 2)]


class FakeSwitch:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def set_power(self, port, on):
        self.calls.append(on)
        return switches.PortState(port.port, on, "deliveringPower" if on else "disabled")


def test_a_cycle_turns_the_port_on_again_whatever_interrupts_the_wait():
    sw = FakeSwitch()

    def interrupted(_seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        switches.cycle(sw, PORT, 5, sleep=interrupted)
    assert sw.calls == [False, True]
    seen = []
    off, on = switches.cycle(sw, PORT, 0.5, sleep=seen.append, on_step=lambda what, st: seen.append(what))
    assert seen == ["off", 0.5, "on"] and (off.enabled, on.enabled) == (False, True)
    with pytest.raises(ValueError, match="between 0 and 300"):
        switches.cycle(sw, PORT, 301)


def test_a_port_is_read_before_it_is_set_and_after():
    drv = _driver({f"{snmp_poe.ADMIN_ENABLE}.1.12": 1, f"{snmp_poe.DETECTION_STATUS}.1.12": 1})
    state = drv.set_power(PORT, False)
    assert drv.session.sets == [(f"{snmp_poe.ADMIN_ENABLE}.1.12", 2)] and state.enabled is False


def test_after_a_lost_task_the_port_is_turned_on_only_if_it_was_left_off(monkeypatch):
    from fleet.config.inventory import Phone
    from fleet.rollout import power_fallback

    class Left(FakeSwitch):
        def __init__(self, enabled: bool) -> None:
            super().__init__()
            self.enabled = enabled

        def port_state(self, port):
            return switches.PortState(port.port, self.enabled, "")

        def close(self):
            pass

    phone = Phone(mac="0004f2000001", model="VVX 410", address="127.0.0.2", credentials="a", poe=PORT)
    for enabled, turned in ((False, True), (True, False)):
        sw, logged = Left(enabled), []
        monkeypatch.setattr(switches, "for_phone", lambda site, p, secrets, sw=sw: (sw, p.poe))
        assert power_fallback.ensure_on(None, phone, None, lambda kind, **f: logged.append(kind)) is turned
        assert sw.calls == ([True] if turned else []) and logged == (["power-on"] if turned else [])
