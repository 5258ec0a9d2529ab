"""SIP 2.x: no state polling or notifications (they arrived with SIP 3.1), so a call check cannot tell: unknown."""
from __future__ import annotations

from . import CallCheck
from .soundpoint import SoundPointControl


class Control(SoundPointControl):
    def call_check(self) -> CallCheck:
        return CallCheck("unknown", "SIP 2.x has no state polling: the phone cannot say whether it is in a call")
