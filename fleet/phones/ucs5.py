"""UC Software 5.x (VVX, Trio): call state, reboot and uptime over REST, by the endpoints the phone's version has.

The firmware version decides: no REST before 5.4 (the family's fallbacks are used, and the reason said:
state polling for the call check, check-sync for the reboot), v1 callStatus from 5.4, v2 from 5.8. The
version comes from the inventory (`firmware_version`) and from the phone itself (device/info); when both
exist and differ, the control reports the mismatch and does not guess which is right.

One RestPhone (one HTTP session, one authentication state) per control, for the control's life; each REST
request holds the phone's lock in the store (fleet.state.lease.PhoneRestLock) when the control has a store, so a
collector's poller and a worker's control never send the phone two requests at once.
"""
from __future__ import annotations

import time
from typing import Collection

from soundpoint.conformance import version_in
from soundpoint.values import plural

from fleet.drivers.control.rest import RestPhone, RestUnsupported, call_status_v2
from fleet.phoneconf.firmware import REST_FROM, supports_rest
from fleet.drivers.control.call_check import refused as refused_check
from fleet.drivers.errors import AuthRefused, DeviceRefused, DeviceTimeout, DriverError
from fleet.phones import Announce, CallCheck, Identity, PhoneAccess, identity_failure, shown
from fleet.phones.soundpoint import REBOOT_DESCRIPTIONS, SoundPointControl
from fleet.state.lease import PhoneRestLock

UPTIME_STEP_S = 1.0   # device/info's uptime is whole seconds ("UpTimeSinceLastReboot": "0 Days 0:05:13")


class Control(SoundPointControl):
    def __init__(self, access: PhoneAccess) -> None:
        super().__init__(access)
        self._rest: RestPhone | None = None
        self._reported: str | None = None     # the version the phone reported (device/info), once read

    @property
    def rest(self) -> RestPhone:
        """One session per control: its calls run one after another (the phone serves one request at a time)."""
        if self._rest is None:
            guard = None
            if self.access.store is not None and hasattr(self.access.store, "r"):
                guard = PhoneRestLock.factory(self.access.store, self.phone.mac, owner="control")
            self._rest = RestPhone(self.phone, self.access.creds, firmware=self.phone.firmware_version or "",
                                   guard=guard)
        return self._rest

    # ------------------------------------------------------------ firmware version
    def _version(self, timeout: float | None = None) -> tuple[str, str]:
        """(the version to use, why REST cannot be used or ""): the phone's own word where it answers,
        the inventory's where REST is not there to ask. A mismatch is a reason, never a guess."""
        listed = self.phone.firmware_version or ""
        if listed and not supports_rest(listed):
            return listed, (f"the inventory says firmware {listed}, and REST exists only from UC Software "
                            f"{REST_FROM}")
        if self._reported is None:
            try:
                info = self.rest.device_info(timeout)
            except RestUnsupported as exc:
                return listed, f"no REST API on this phone ({exc.message})"
            self._reported = info.firmware
        if self._reported and listed and not version_in(self._reported, listed):
            return self._reported, (f"firmware mismatch: the inventory says {listed}, the phone reports "
                                    f"{shown(self._reported)}; correct firmware_version")
        version = self._reported or listed
        if version and not supports_rest(version):
            return version, f"the phone reports firmware {shown(version)}, REST exists only from {REST_FROM}"
        return version, ""

    # ------------------------------------------------------------ call state
    def call_check(self) -> CallCheck:
        try:
            version, refused = self._version()
        except AuthRefused as exc:
            return refused_check("the admin login (REST)", exc)
        except DriverError as exc:
            return CallCheck("unknown", f"REST device/info: {exc.message}")
        if refused:
            if refused.startswith("firmware mismatch"):
                return CallCheck("unknown", refused)
            fallback = super().call_check()
            if fallback.state == "refused":
                return fallback
            return CallCheck(fallback.state, f"REST refused ({refused}); state polling used"
                             + (f": {fallback.reason}" if fallback.reason else ""))
        endpoint = "v2" if call_status_v2(version or "0") else "v1"
        try:
            status = self.rest.call_status()
        except AuthRefused as exc:
            return refused_check("the admin login (REST)", exc)
        except DriverError as exc:
            return CallCheck("unknown", f"REST callStatus {endpoint}: {exc.message}")
        if not status.in_call:
            return CallCheck("idle", f"REST callStatus {endpoint}: no call")
        states = ", ".join(shown(s, 20) for s in status.states[:4])
        return CallCheck("in-call", f"REST callStatus {endpoint}: {plural(len(status.states), 'call')} ({states})")

    # ------------------------------------------------------------ identity
    def identify(self, timeout: float = 5.0) -> Identity:
        """REST device/info with the admin login (state polling below 5.4): model, firmware and the MAC to check
        against the inventory; a firmware version other than the inventory's is the row's problem."""
        listed = self.phone.firmware_version
        if listed and not supports_rest(listed):
            found = super().identify(timeout)     # no REST before 5.4: the family's state polling
            return Identity(f"{found.method}; no REST on firmware {listed}", found.problem, found.detail, found.firmware)
        auth = self.phone.http_auth or "basic first, digest on challenge"
        method = f"REST GET /api/v1/mgmt/device/info ({auth}, the admin login)"
        try:
            info = self.rest.device_info(timeout)
        except DriverError as exc:
            return identity_failure(method, exc)
        self._reported = info.firmware
        return self._firmware_checked(self._identity(method, info.mac, info.model or "?", info.firmware or "?"),
                                      info.firmware)

    # ------------------------------------------------------------ reboot
    def reboot(self, announce: Announce | None = None, fallback: bool = True) -> str:
        """REST safeRestart where the phone has REST; a phone without it (before 5.4, or REST off) gets the
        family's fallback, check-sync, unless the inventory chose `reboot: rest` explicitly."""
        if self.phone.reboot_method != "rest":
            return super().reboot(announce, fallback)
        version, refused = self._version()
        if refused.startswith("firmware mismatch"):
            raise DriverError(self.rest.name, refused)
        if refused:
            if self.phone.reboot == "rest" or not fallback:
                raise DriverError(self.rest.name, f"reboot by REST refused: {refused}")
            (announce or (lambda _m: None))("check-sync")
            self._reboot_check_sync()
            return f"{REBOOT_DESCRIPTIONS['check-sync']} (REST refused: {refused})"[:300]
        return super().reboot(announce, fallback)

    def _reboot_rest(self) -> None:
        self.rest.restart()
        self._reboot_answered_at = self.rest.last_answered

    def rebooted_since(self, since: float, params: dict[str, str], tried: Collection[str] | None = None) -> bool:
        """REST phones say so through their uptime; one that does not answer is taken as rebooting. A reboot that
        went out (or may have) by another method is judged as on the other families."""
        if "rest" not in self.maybe_sent(tried):
            return super().rebooted_since(since, params, tried)
        try:
            now = time.time()     # before asking: the lock, the round trip and the parse come after the boot
            uptime = self.rest.uptime()
            self._reboot_seen_at = now - uptime - UPTIME_STEP_S   # booted then, give or take the answer's step
            return uptime < now - since + 1
        except (DeviceTimeout, DeviceRefused):
            self._reboot_seen_at = time.time()     # down (or booting) now
            return True
        except DriverError:
            return False
