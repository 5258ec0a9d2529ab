"""SIP 2.x: no state polling or notifications (they arrived with SIP 3.1), so a call check cannot tell: unknown.

What it does have is the web configuration utility, so that is what tells whether the phone is there and takes
the admin login (its pages say nothing we could check the phone's identity by).
"""
from __future__ import annotations

from fleet.drivers.control import web_ui
from fleet.drivers.errors import DriverError
from fleet.phones import CallCheck, Identity, identity_failure
from fleet.phones.soundpoint import SoundPointControl


class Control(SoundPointControl):
    def call_check(self) -> CallCheck:
        return CallCheck("unknown", "SIP 2.x has no state polling: the phone cannot say whether it is in a call")

    def identify(self, timeout: float = 5.0) -> Identity:
        method = f"web UI GET {web_ui.HOME_PATH} (the admin login, only as the phone asks for it)"
        try:
            logged_in = web_ui.read_home(self.phone, self.access.creds, timeout)
        except DriverError as exc:
            return identity_failure(method, exc)
        return Identity(method, "", "admin login accepted" if logged_in else
                        "answered without asking for a login (the admin login is not checked)")
