"""The lab's SNMP agents (pysnmp): the userspace router's (IF-MIB ifDescr, ifAdminStatus settable, ifOperStatus)
on `SnmpAgent`, and the base both it and the PoE switch's agent (hil.poe_switch) stand on, `SnmpResponder`.

v2c (a read-write community) and v3 authPriv (SHA/AES) are both served. A set
of ifAdminStatus acts on the router exactly like `ip link set dev wan0 up|down`,
through the same control path as the SSH shell. Values other than up(1) and
down(2) are refused with wrongValue, as a real agent does; testing(3) too.
Numeric OIDs (Debian ships no MIB files): ifDescr 1.3.6.1.2.1.2.2.1.2.N,
ifAdminStatus ...7.N, ifOperStatus ...8.N; N=1 lan0, N=2 the WAN interface.
"""
from __future__ import annotations

import abc

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto.rfc1902 import Integer, OctetString
from pysnmp.smi import error as smi_error

IF_ENTRY = (1, 3, 6, 1, 2, 1, 2, 2, 1)
IF_DESCR, IF_ADMIN, IF_OPER = IF_ENTRY + (2,), IF_ENTRY + (7,), IF_ENTRY + (8,)


class SnmpResponder(abc.ABC):
    """An agent on (host, port): a v2c read-write community and a v3 authPriv (SHA/AES) user, both allowed to read
    and write `subtree` only; a request with another community or user is dropped unanswered, as real agents do.
    A subclass installs its objects in `_install_mib`."""
    subtree: tuple[int, ...] = ()

    def __init__(self, host: str, port: int, community: str, v3_user: str, v3_auth: str, v3_priv: str) -> None:
        self.engine = engine.SnmpEngine()
        config.add_transport(self.engine, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_server_mode((host, port)))
        config.add_v1_system(self.engine, "lab-rw", community)
        config.add_v3_user(self.engine, v3_user, config.USM_AUTH_HMAC96_SHA, v3_auth, config.USM_PRIV_CFB128_AES, v3_priv)
        config.add_vacm_user(self.engine, 2, "lab-rw", "noAuthNoPriv", self.subtree, self.subtree)
        config.add_vacm_user(self.engine, 3, v3_user, "authPriv", self.subtree, self.subtree)
        self._install_mib()
        ctx = context.SnmpContext(self.engine)
        for responder in (cmdrsp.GetCommandResponder, self.set_responder(), cmdrsp.NextCommandResponder,
                          cmdrsp.BulkCommandResponder):
            responder(self.engine, ctx)

    def set_responder(self) -> type:
        """The SET responder class (a subclass may count the SETs it is sent)."""
        return cmdrsp.SetCommandResponder

    @abc.abstractmethod
    def _install_mib(self) -> None:
        """Register this agent's objects (the router's IF-MIB rows, a switch's POWER-ETHERNET-MIB ports)."""

    def stop(self) -> None:
        self.engine.close_dispatcher()


class SnmpAgent(SnmpResponder):
    subtree = IF_ENTRY

    def __init__(self, router, host: str, port: int, community: str, v3_user: str, v3_auth: str, v3_priv: str) -> None:
        self.router = router
        super().__init__(host, port, community, v3_user, v3_auth, v3_priv)

    def _install_mib(self) -> None:
        builder = self.engine.get_mib_builder()
        MibScalar, MibScalarInstance = builder.import_symbols("SNMPv2-SMI", "MibScalar", "MibScalarInstance")
        router = self.router
        names = {1: "lan0", 2: router.wan.name}

        def admin_up(index: int) -> bool:
            return True if index == 1 else router.wan.admin_up

        class Descr(MibScalarInstance):
            def getValue(self, name, **ctx):
                return self.getSyntax().clone(names[self.instId[0]])

        class Oper(MibScalarInstance):
            def getValue(self, name, **ctx):
                return self.getSyntax().clone(1 if admin_up(self.instId[0]) else 2)

        class Admin(MibScalarInstance):
            def getValue(self, name, **ctx):
                return self.getSyntax().clone(1 if admin_up(self.instId[0]) else 2)

            def setValue(self, value, name, **ctx):
                if value is None or int(value) not in (1, 2):
                    raise smi_error.WrongValueError(name=name, idx=ctx.get("idx"), msg="ifAdminStatus must be up(1) or down(2)")
                if self.instId[0] == 1:
                    raise smi_error.NotWritableError(name=name, idx=ctx.get("idx"), msg="the LAN interface stays up")
                return self.getSyntax().clone(int(value))

            def writeCommit(self, varBind, **ctx):
                super().writeCommit(varBind, **ctx)
                rc, _, err = router.apply(["ip", "link", "set", "dev", router.wan.name, "up" if int(varBind[1]) == 1 else "down"])
                if rc != 0:
                    raise smi_error.CommitFailedError(name=varBind[0], idx=ctx.get("idx"), msg=err)

        symbols = {
            "ifDescrCol": MibScalar(IF_DESCR, OctetString()).setMaxAccess("read-only"),
            "ifAdminStatusCol": MibScalar(IF_ADMIN, Integer()).setMaxAccess("read-write"),
            "ifOperStatusCol": MibScalar(IF_OPER, Integer()).setMaxAccess("read-only"),
        }
        for i in (1, 2):
            symbols[f"ifDescr{i}"] = Descr(IF_DESCR, (i,), OctetString(names[i]))
            symbols[f"ifAdminStatus{i}"] = Admin(IF_ADMIN, (i,), Integer(1))
            symbols[f"ifOperStatus{i}"] = Oper(IF_OPER, (i,), Integer(1))
        builder.export_symbols("HIL-IF-MIB", **symbols)
