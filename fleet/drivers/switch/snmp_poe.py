"""A PoE switch over SNMP: POWER-ETHERNET-MIB (RFC 3621) pethPsePortAdminEnable, read back with
pethPsePortDetectionStatus.

The whole driver is two OIDs per port on the shared checked session
(fleet.drivers.snmp_session), as labgrid's poe_mib backend is two functions;
unlike that backend, the port is read before anything is set (an unknown port
answers noSuchInstance: refused, nothing sent), the set's error status is
checked and the value read back. Values: TruthValue true(1)/false(2) (SNMPv2-TC);
detection status disabled(1) searching(2) deliveringPower(3) fault(4) test(5)
otherFault(6) (RFC 3621 section 5; conformance entries switch-peth-*).
"""
from __future__ import annotations

import time

from fleet.config.inventory import Credentials, PoePort, Switch
from fleet.drivers.errors import DeviceRefused, MalformedAnswer
from fleet.drivers.snmp_session import SnmpSession, SnmpTarget
from fleet.drivers.switch import PortState

PETH_PSE_PORT_ENTRY = "1.3.6.1.2.1.105.1.1.1"
ADMIN_ENABLE = PETH_PSE_PORT_ENTRY + ".3"
DETECTION_STATUS = PETH_PSE_PORT_ENTRY + ".6"
TRUE, FALSE = 1, 2
DETECTION = {1: "disabled", 2: "searching", 3: "deliveringPower", 4: "fault", 5: "test", 6: "otherFault"}


class SnmpPoeSwitch:
    def __init__(self, switch: Switch, credentials: Credentials) -> None:
        self.switch = switch
        self.name = f"switch {switch.name} {switch.address}:{switch.port} (SNMP)"
        self.session = SnmpSession(SnmpTarget(self.name, switch.address, switch.port, switch.snmp_version,
                                              switch.timeout), credentials)

    @staticmethod
    def _row(port: PoePort) -> str:
        group, index = port.index
        return f"{group}.{index}"

    def _admin(self, port: PoePort) -> bool:
        value = self.session.get_int(f"{ADMIN_ENABLE}.{self._row(port)}")
        if value not in (TRUE, FALSE):
            raise MalformedAnswer(self.name, f"pethPsePortAdminEnable.{port.port} is {value}, not true(1) or false(2)")
        return value == TRUE

    def _detection(self, port: PoePort) -> str:
        """The detection status by name; a value RFC 3621 does not define is reported as its number, never
        guessed (a pre-RFC draft numbered them otherwise: conformance switch-peth-detection-status)."""
        value = self.session.get_int(f"{DETECTION_STATUS}.{self._row(port)}")
        return DETECTION.get(value, f"unknown({value})")

    def port_state(self, port: PoePort) -> PortState:
        enabled = self._admin(port)
        return PortState(port.port, enabled, self._detection(port), at=time.time())

    def set_power(self, port: PoePort, on: bool) -> PortState:
        self._admin(port)      # refused here (NoSuchName, no answer) before any set is sent
        answered = self.session.set_int(f"{ADMIN_ENABLE}.{self._row(port)}", TRUE if on else FALSE)
        state = PortState(port.port, self._admin(port), self._detection(port), at=answered)
        if state.enabled != on:
            raise DeviceRefused(self.name, f"port {port.port} reads back {'disabled' if on else 'enabled'}")
        return state

    def close(self) -> None:
        return None


def connect(switch: Switch, credentials: Credentials) -> SnmpPoeSwitch:
    return SnmpPoeSwitch(switch, credentials)
