"""A site's PoE switch in the lab: POWER-ETHERNET-MIB (RFC 3621) pethPsePortTable over a real SNMP agent, whose
ports power the site's virtual phones.

Port `1.(i+1)` (group 1, as a non-modular switch numbers it) powers phone i of the site.
pethPsePortAdminEnable (...105.1.1.1.3.G.P) is read-write, TruthValue true(1)/false(2),
anything else refused with wrongValue; pethPsePortDetectionStatus (...105.1.1.1.6.G.P)
reads deliveringPower(3) while the port is enabled and its phone draws power,
searching(2) while enabled and the phone is off, disabled(1) while disabled
(RFC 3621 section 5; soundpoint/conformance/entries/switch/). A port the
switch does not have answers noSuchInstance to a GET, and a SET to it is refused
(notWritable), as pysnmp's and net-snmp's agents do. Turning a port off takes its
phone's power away at once (hil.phone_power); on boots it again.

Every SET that passes authentication is counted (`sets`), so a test can tell a
refusal made before anything was sent from one the switch made.
"""
from __future__ import annotations

import asyncio

from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.proto.rfc1902 import Integer
from pysnmp.smi import error as smi_error

from soundpoint import conformance

from .snmp_agent import SnmpResponder

PETH_ENTRY = (1, 3, 6, 1, 2, 1, 105, 1, 1, 1)
ADMIN_ENABLE, DETECTION_STATUS = PETH_ENTRY + (3,), PETH_ENTRY + (6,)
# the values the switch answers, from the conformance corpus the driver is tested against
TRUE = int(conformance.get("switch-peth-admin-enable-true").body)
FALSE = int(conformance.get("switch-peth-admin-enable-false").body)
DELIVERING = int(conformance.get("switch-peth-detection-status").body)
DISABLED, SEARCHING = 1, 2      # RFC 3621 section 5, pethPsePortDetectionStatus (entry switch-peth-detection-status)


def port_of(i: int) -> str:
    """The PSE port (GROUP.PORT) that powers phone i of a site."""
    return f"1.{i + 1}"


class PoeSwitchAgent(SnmpResponder):
    subtree = PETH_ENTRY

    def __init__(self, name: str, phones: list, host: str, port: int, community: str, v3_user: str, v3_auth: str,
                 v3_priv: str) -> None:
        self.name = name
        self.phones = {(1, i + 1): phone for i, phone in enumerate(phones)}
        self.enabled = {key: True for key in self.phones}
        self.sets = 0
        self.address = (host, port)
        self._tasks: set[asyncio.Task] = set()
        super().__init__(host, port, community, v3_user, v3_auth, v3_priv)

    def set_responder(self) -> type:
        agent = self

        class Counting(cmdrsp.SetCommandResponder):
            def handle_management_operation(self, snmpEngine, stateReference, contextName, PDU):
                agent.sets += 1
                return super().handle_management_operation(snmpEngine, stateReference, contextName, PDU)
        return Counting

    def power(self, key: tuple[int, int], on: bool) -> None:
        """Enable or disable a port, as a SET does (also the lab's own controls)."""
        if self.enabled[key] == on:
            return
        self.enabled[key] = on
        phone = self.phones[key]
        task = asyncio.ensure_future(phone.power_on() if on else phone.power_off())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def summary(self) -> dict:
        return {"name": self.name, "address": f"{self.address[0]}:{self.address[1]}", "sets": self.sets,
                "ports": [{"port": f"{g}.{p}", "enabled": self.enabled[(g, p)], "mac": phone.mac,
                           "powered": phone.powered} for (g, p), phone in self.phones.items()]}

    def _install_mib(self) -> None:
        builder = self.engine.get_mib_builder()
        MibScalar, MibScalarInstance = builder.import_symbols("SNMPv2-SMI", "MibScalar", "MibScalarInstance")
        agent = self

        class Admin(MibScalarInstance):
            def getValue(self, name, **ctx):
                return self.getSyntax().clone(TRUE if agent.enabled[tuple(self.instId)] else FALSE)

            def setValue(self, value, name, **ctx):
                if value is None or int(value) not in (TRUE, FALSE):
                    raise smi_error.WrongValueError(name=name, idx=ctx.get("idx"),
                                                    msg="pethPsePortAdminEnable is true(1) or false(2)")
                return self.getSyntax().clone(int(value))

            def writeCommit(self, varBind, **ctx):
                super().writeCommit(varBind, **ctx)
                agent.power(tuple(self.instId), int(varBind[1]) == TRUE)

        class Detection(MibScalarInstance):
            def getValue(self, name, **ctx):
                key = tuple(self.instId)
                if not agent.enabled[key]:
                    return self.getSyntax().clone(DISABLED)
                return self.getSyntax().clone(DELIVERING if agent.phones[key].powered else SEARCHING)

        symbols = {"pethPsePortAdminEnableCol": MibScalar(ADMIN_ENABLE, Integer()).setMaxAccess("read-write"),
                   "pethPsePortDetectionStatusCol": MibScalar(DETECTION_STATUS, Integer()).setMaxAccess("read-only")}
        for g, p in self.phones:
            symbols[f"pethPsePortAdminEnable_{g}_{p}"] = Admin(ADMIN_ENABLE, (g, p), Integer(TRUE))
            symbols[f"pethPsePortDetectionStatus_{g}_{p}"] = Detection(DETECTION_STATUS, (g, p), Integer(DELIVERING))
        builder.export_symbols("HIL-POWER-ETHERNET-MIB", **symbols)
