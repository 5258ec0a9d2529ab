"""A router controlled by SNMP: IF-MIB ifAdminStatus on the WAN interface (pysnmp, v2c or v3 authPriv).

Every request goes through fleet.drivers.snmp_session, which checks
errorIndication and errorStatus and reads each set back (labgrid's
SimpleSNMP.set() does neither). SNMP has no way to schedule a restore on the
router, so there is no router-side dead-man's switch: the inventory must say
`allow_without_deadman: true` to cut with this driver.
"""
from __future__ import annotations

from fleet.config.inventory import Credentials, Router
from fleet.drivers.errors import DeviceRefused
from fleet.drivers.router import Outage, RouterOutcome, WanState
from fleet.drivers.snmp_session import SnmpSession, SnmpTarget

IF_DESCR = "1.3.6.1.2.1.2.2.1.2"
IF_ADMIN = "1.3.6.1.2.1.2.2.1.7"
IF_OPER = "1.3.6.1.2.1.2.2.1.8"
MODES = ("link-down",)
UP, DOWN = 1, 2
NO_DEADMAN = ("none: SNMP cannot schedule a restore on the router; cut only because the inventory sets "
              "allow_without_deadman, so a controller that dies mid-outage leaves the WAN down")


class SnmpRouter:
    modes = MODES

    def __init__(self, router: Router, credentials: Credentials) -> None:
        self.router = router
        self.name = f"router {router.address}:{router.port} (SNMP)"
        self.session = SnmpSession(SnmpTarget(self.name, router.address, router.port, router.snmp_version,
                                              router.timeout), credentials)
        self.if_index = self._find_index()

    def _find_index(self) -> int:
        for oid, value in self.session.walk(IF_DESCR):
            if value.prettyPrint() == self.router.wan_interface:
                return int(oid.rsplit(".", 1)[1])
        raise DeviceRefused(self.name, f"no interface named {self.router.wan_interface} in ifDescr")

    def _get(self, column: str) -> int:
        return self.session.get_int(f"{column}.{self.if_index}")

    def _set_admin(self, value: int) -> float:
        """Set ifAdminStatus and read it back; returns when the agent answered the set."""
        return self.session.set_int(f"{IF_ADMIN}.{self.if_index}", value)

    has_deadman = False

    def cut(self, outage: Outage) -> RouterOutcome:
        """ifAdminStatus down. The router keeps no outage state over SNMP: the order of cut and restore is
        guarded by the worker (fleet.experiment.outage), and there is no router-side restore to fall back on."""
        if outage.mode not in MODES:
            raise DeviceRefused(self.name, f"outage mode {outage.mode!r} not supported over SNMP")
        if not self.router.allow_without_deadman:
            raise DeviceRefused(self.name, "SNMP cannot schedule a restore on the router (no dead-man's switch); "
                                           "set allow_without_deadman: true in the inventory to cut anyway")
        done_at = self._set_admin(DOWN)
        return RouterOutcome("cut", deadman=NO_DEADMAN, state=self.wan_state(outage.id), done_at=done_at)

    def restore(self, outage: Outage) -> RouterOutcome:
        done_at = self._set_admin(UP)
        return RouterOutcome("restored", by="controller", state=self.wan_state(outage.id), done_at=done_at)

    def wan_state(self, outage_id: str | None = None) -> WanState:
        """ifAdminStatus and ifOperStatus; SNMP sets no rules or qdiscs, so those stay at their defaults."""
        return WanState(link_up=self._get(IF_ADMIN) == UP, oper_up=self._get(IF_OPER) == UP)

    def close(self) -> None:
        return None


def connect(router: Router, credentials: Credentials) -> SnmpRouter:
    return SnmpRouter(router, credentials)
