"""One SNMP agent reached by pysnmp (v2c or v3 authPriv), with every answer checked: the router's and the PoE
switch's drivers share it.

labgrid's SimpleSNMP.set() ignores the error status, so a set that failed
looks like success; here every request checks errorIndication (no answer: a
wrong community or user is silently dropped by the agent, RFC 3584 section 4
and RFC 3414 section 3.2) and errorStatus, every value is checked for the
v2c exceptions (noSuchObject, noSuchInstance, endOfMibView: RFC 3416 section
4.2.1, an object or row the agent does not have), and a set is read back.
Each request runs with its own engine, so a session holds no socket between
calls and a hung agent costs at most `timeout` per request.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pysnmp.hlapi.v3arch.asyncio import (CommunityData, ContextData, Integer, ObjectIdentity, ObjectType, SnmpEngine,
                                         UdpTransportTarget, UsmUserData, get_cmd, next_cmd, set_cmd,
                                         usmAesCfb128Protocol, usmHMACSHAAuthProtocol)
from pysnmp.proto import errind
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from fleet.drivers.errors import AuthRefused, DeviceRefused, DeviceTimeout, DriverError, MalformedAnswer

# what an agent says (a v3 report, RFC 3414 section 3.2) or pysnmp concludes when the login is wrong: a refusal, never
# retried as a timeout is; a v2c agent says nothing to a wrong community (RFC 3584 section 5.2.1), which stays a timeout
LOGIN_REFUSED = (errind.WrongDigest, errind.UnknownUserName, errind.AuthenticationError, errind.AuthenticationFailure,
                 errind.DecryptionError, errind.UnknownSecurityName, errind.UnknownCommunityName,
                 errind.UnsupportedSecurityLevel, errind.NotInView, errind.NoAccessEntry)
WALK_LIMIT = 256   # rows a walk reads at most: an agent that never ends a table cannot keep a worker forever


class NoSuchName(DeviceRefused):
    """The agent has no such object or instance (an interface, a port): nothing was set."""


@dataclass(frozen=True)
class SnmpTarget:
    """Where and how to reach an agent: `version` "2c" (the community is the credentials' password) or "3"
    (authPriv, SHA/AES: username, password as the auth key, priv_password as the privacy key)."""
    name: str            # how errors name the device ("router 10.1.0.1:161 (SNMP)")
    address: str
    port: int
    version: str
    timeout: float


class SnmpSession:
    """Checked GET, SET (read back) and walk against one agent; sync methods that run their own event loop,
    since the drivers run inside Celery tasks."""

    def __init__(self, target: SnmpTarget, credentials) -> None:
        self.target = target
        self.name = target.name
        if target.version == "2c":
            self.auth = CommunityData(credentials.password, mpModel=1)
        else:
            self.auth = UsmUserData(credentials.username, credentials.password,
                                    credentials.priv_password or credentials.password,
                                    authProtocol=usmHMACSHAAuthProtocol, privProtocol=usmAesCfb128Protocol)

    # ------------------------------------------------------------ sync API
    def get_int(self, oid: str) -> int:
        return self._run(self._get_int(oid))

    def set_int(self, oid: str, value: int) -> float:
        """Set an integer and read it back; returns when the agent answered the set (the change happened then,
        not after the read-back, which costs a second request). DeviceRefused when it reads back otherwise."""
        return self._run(self._set_int(oid, value))

    def walk(self, prefix: str, limit: int = WALK_LIMIT) -> list[tuple[str, object]]:
        """The (oid, value) pairs under `prefix`, in the agent's order, at most `limit`."""
        return self._run(self._walk(prefix, limit))

    # ------------------------------------------------------------ internals
    def _run(self, coro):
        try:
            return asyncio.run(coro)
        except DriverError:
            raise
        except Exception as exc:  # pysnmp raises many types on bad input; none of them escapes untyped
            raise MalformedAnswer(self.name, f"SNMP failure: {type(exc).__name__}") from None

    async def _transport(self) -> UdpTransportTarget:
        return await UdpTransportTarget.create((self.target.address, self.target.port),
                                               timeout=self.target.timeout / 3, retries=2)

    def _check(self, what: str, error_indication, error_status, error_index) -> None:
        if isinstance(error_indication, LOGIN_REFUSED):
            raise AuthRefused(self.name, f"{what}: the agent refused the login ({error_indication})")
        if error_indication:
            raise DeviceTimeout(self.name, f"{what}: {error_indication}")
        if error_status:
            raise DeviceRefused(self.name, f"{what}: SNMP error {error_status.prettyPrint()} at varbind {int(error_index)}")

    async def _request(self, command, what: str, *var_binds):
        """One SNMP request with its own engine; errorIndication and errorStatus are always checked."""
        engine = SnmpEngine()
        try:
            ei, es, ex, binds = await command(engine, self.auth, await self._transport(), ContextData(), *var_binds)
            self._check(what, ei, es, ex)
            return binds
        finally:
            engine.close_dispatcher()

    async def _get_int(self, oid: str) -> int:
        binds = await self._request(get_cmd, f"get {oid}", ObjectType(ObjectIdentity(oid)))
        try:
            value = binds[0][1]
        except (TypeError, IndexError):
            raise MalformedAnswer(self.name, f"get {oid}: no value in the answer") from None
        if isinstance(value, (NoSuchInstance, NoSuchObject, EndOfMibView)):
            raise NoSuchName(self.name, f"get {oid}: {type(value).__name__} (the agent has no such object)")
        try:
            return int(value)
        except Exception:       # pyasn1 raises its own error for a non-integer
            raise MalformedAnswer(self.name, f"{oid} is not an integer") from None

    async def _set_int(self, oid: str, value: int) -> float:
        await self._request(set_cmd, f"set {oid}={value}", ObjectType(ObjectIdentity(oid), Integer(value)))
        answered = time.time()
        if await self._get_int(oid) != value:
            raise DeviceRefused(self.name, f"{oid} reads back differently after the set to {value}")
        return answered

    async def _walk(self, prefix: str, limit: int) -> list[tuple[str, object]]:
        engine = SnmpEngine()
        found: list[tuple[str, object]] = []
        try:
            target = await self._transport()
            oid = prefix
            for _ in range(limit):
                ei, es, ex, binds = await next_cmd(engine, self.auth, target, ContextData(), ObjectType(ObjectIdentity(oid)))
                self._check(f"walk {prefix}", ei, es, ex)
                if not binds:
                    break
                name, value = binds[0]
                oid = str(name)
                if not oid.startswith(prefix + ".") or isinstance(value, EndOfMibView):
                    break
                found.append((oid, value))
            return found
        finally:
            engine.close_dispatcher()
