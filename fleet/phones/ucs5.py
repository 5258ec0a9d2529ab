"""UC Software 5.x (VVX, Trio): call state, reboot and uptime over REST, one request at a time per phone."""
from __future__ import annotations

import time
from typing import Collection

from ..drivers.control.rest import RestPhone
from ..drivers.errors import DeviceRefused, DeviceTimeout, DriverError
from . import CallCheck, Identity, PhoneAccess, identity_failure
from .soundpoint import SoundPointControl


class Control(SoundPointControl):
    def __init__(self, access: PhoneAccess) -> None:
        super().__init__(access)
        self._rest: RestPhone | None = None

    @property
    def rest(self) -> RestPhone:
        """One session per control: its calls run one after another (the phone serves one request at a time)."""
        if self._rest is None:
            self._rest = RestPhone(self.phone, self.access.creds)
        return self._rest

    def call_check(self) -> CallCheck:
        try:
            state = self.rest.call_state()
        except DriverError as exc:
            return CallCheck("unknown", f"REST callStatus: {exc.message}")
        if state == "Idle":
            return CallCheck("idle")
        return CallCheck("in-call" if state else "unknown", f"REST callStatus {state!r:.40}" if state else
                         "REST callStatus gave no state")

    def identify(self, timeout: float = 5.0) -> Identity:
        """REST device/info with the admin login: model, firmware and the MAC to check against the inventory."""
        method = f"REST GET /api/v1/mgmt/device/info ({self.phone.http_auth}, the admin login)"
        try:
            info = RestPhone(self.phone, self.access.creds, timeout=timeout, session=self.rest.session).device_info()
        except DriverError as exc:
            return identity_failure(method, exc)
        return self._identity(method, str(info.get("MACAddress", "")), str(info.get("ModelNumber", "?")),
                              str(info.get("FirmwareRelease", "?")))

    def _reboot_rest(self) -> None:
        self.rest.restart()

    def rebooted_since(self, since: float, params: dict[str, str], tried: Collection[str] | None = None) -> bool:
        """REST phones say so through their uptime; one that does not answer is taken as rebooting. A reboot that
        went out (or may have) by another method is judged as on the other families."""
        if "rest" not in self.maybe_sent(tried):
            return super().rebooted_since(since, params, tried)
        try:
            return self.rest.uptime() < time.time() - since + 1
        except (DeviceTimeout, DeviceRefused):
            return True
        except DriverError:
            return False
