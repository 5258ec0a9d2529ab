"""A router controlled by SNMP: IF-MIB ifAdminStatus on the WAN interface (pysnmp, v2c or v3 authPriv).

labgrid's SimpleSNMP.set() ignores the error status, so a set that failed
looks like success; here every set checks errorIndication and errorStatus and
then reads the value back. SNMP has no way to schedule a restore on the
router, so there is no router-side dead-man's switch: the inventory must say
`allow_without_deadman: true` to cut with this driver.
"""
from __future__ import annotations

import asyncio
import time

from pysnmp.hlapi.v3arch.asyncio import (CommunityData, ContextData, Integer, ObjectIdentity, ObjectType, SnmpEngine,
                                         UdpTransportTarget, UsmUserData, get_cmd, next_cmd, set_cmd,
                                         usmAesCfb128Protocol, usmHMACSHAAuthProtocol)

from fleet.config.inventory import Credentials, Router
from fleet.drivers.errors import DeviceRefused, DeviceTimeout, DriverError, MalformedAnswer
from fleet.drivers.router import Outage, RouterOutcome, WanState

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
        if router.snmp_version == "2c":
            self.auth = CommunityData(credentials.password, mpModel=1)
        else:
            self.auth = UsmUserData(credentials.username, credentials.password, credentials.priv_password or credentials.password,
                                    authProtocol=usmHMACSHAAuthProtocol, privProtocol=usmAesCfb128Protocol)
        self.if_index = self._run(self._find_index())

    def _run(self, coro):
        try:
            return asyncio.run(coro)
        except DriverError:
            raise
        except Exception as exc:  # pysnmp raises many types on bad input; none of them escapes untyped
            raise MalformedAnswer(self.name, f"SNMP failure: {type(exc).__name__}") from None

    async def _target(self) -> UdpTransportTarget:
        return await UdpTransportTarget.create((self.router.address, self.router.port), timeout=self.router.timeout / 3, retries=2)

    def _check(self, what: str, error_indication, error_status, error_index) -> None:
        if error_indication:
            raise DeviceTimeout(self.name, f"{what}: {error_indication}")
        if error_status:
            raise DeviceRefused(self.name, f"{what}: SNMP error {error_status.prettyPrint()} at varbind {int(error_index)}")

    async def _find_index(self) -> int:
        engine = SnmpEngine()
        try:
            target = await self._target()
            oid = IF_DESCR
            for _ in range(256):
                ei, es, ex, binds = await next_cmd(engine, self.auth, target, ContextData(), ObjectType(ObjectIdentity(oid)))
                self._check("walk ifDescr", ei, es, ex)
                if not binds:
                    break
                name, value = binds[0]
                oid = str(name)
                if not oid.startswith(IF_DESCR + "."):
                    break
                if value.prettyPrint() == self.router.wan_interface:
                    return int(oid.rsplit(".", 1)[1])
            raise DeviceRefused(self.name, f"no interface named {self.router.wan_interface} in ifDescr")
        finally:
            engine.close_dispatcher()

    async def _request(self, command, what: str, *var_binds):
        """One SNMP request with its own engine; errorIndication and errorStatus are always checked."""
        engine = SnmpEngine()
        try:
            ei, es, ex, binds = await command(engine, self.auth, await self._target(), ContextData(), *var_binds)
            self._check(what, ei, es, ex)
            return binds
        finally:
            engine.close_dispatcher()

    async def _get(self, column: str) -> int:
        binds = await self._request(get_cmd, f"get {column}.{self.if_index}", ObjectType(ObjectIdentity(f"{column}.{self.if_index}")))
        try:
            return int(binds[0][1])
        except (TypeError, ValueError, IndexError):
            raise MalformedAnswer(self.name, f"{column}.{self.if_index} is not an integer") from None

    async def _set_admin(self, value: int) -> float:
        """Set ifAdminStatus and read it back; returns when the agent answered the set (the change happened then,
        not after the read-back, which costs a second SNMP engine)."""
        await self._request(set_cmd, f"set ifAdminStatus.{self.if_index}={value}",
                            ObjectType(ObjectIdentity(f"{IF_ADMIN}.{self.if_index}"), Integer(value)))
        answered = time.time()
        if await self._get(IF_ADMIN) != value:
            raise DeviceRefused(self.name, f"ifAdminStatus.{self.if_index} reads back differently after the set")
        return answered

    has_deadman = False

    def cut(self, outage: Outage) -> RouterOutcome:
        """ifAdminStatus down. The router keeps no outage state over SNMP: the order of cut and restore is
        guarded by the worker (fleet.experiment.outage), and there is no router-side restore to fall back on."""
        if outage.mode not in MODES:
            raise DeviceRefused(self.name, f"outage mode {outage.mode!r} not supported over SNMP")
        if not self.router.allow_without_deadman:
            raise DeviceRefused(self.name, "SNMP cannot schedule a restore on the router (no dead-man's switch); "
                                           "set allow_without_deadman: true in the inventory to cut anyway")
        done_at = self._run(self._set_admin(DOWN))
        return RouterOutcome("cut", deadman=NO_DEADMAN, state=self.wan_state(outage.id), done_at=done_at)

    def restore(self, outage: Outage) -> RouterOutcome:
        done_at = self._run(self._set_admin(UP))
        return RouterOutcome("restored", by="controller", state=self.wan_state(outage.id), done_at=done_at)

    def wan_state(self, outage_id: str | None = None) -> WanState:
        """ifAdminStatus and ifOperStatus; SNMP sets no rules or qdiscs, so those stay at their defaults."""
        admin = self._run(self._get(IF_ADMIN))
        oper = self._run(self._get(IF_OPER))
        return WanState(link_up=admin == UP, oper_up=oper == UP)

    def close(self) -> None:
        return None


def connect(router: Router, credentials: Credentials) -> SnmpRouter:
    return SnmpRouter(router, credentials)
